"""The KV cache budget: the GPU arithmetic, its validator, and the profiling forwards'
steps (run here on the CPU; tests/tp/test_gpu.py measures on a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from rt.core.config import CacheConfig
from rt.core.errors import ConfigError
from rt.core.profile_registry import load_config
from rt.plugins.tp.host_memory import CPU_DEFAULT_BUDGET
from rt.plugins.tp.layers.attention_metadata import build_attention_metadata
from rt.plugins.tp.memory_profile import (
    SCRATCH_BLOCK,
    GpuMemory,
    _forward,
    _step,
    gpu_kv_budget,
    kv_cache_budget,
    prefill_lengths,
)
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from .tiny_models import write_checkpoint

GiB = 2**30


def test_budget_is_the_fraction_less_what_loading_steps_and_graphs_take():
    memory = GpuMemory(
        total=80 * GiB, in_use=20 * GiB, activation_peak=3 * GiB, graph_reserve=1 * GiB
    )
    assert gpu_kv_budget(memory, 0.85, 1024) == int(80 * GiB * 0.85) - 24 * GiB
    assert memory.notes()["activation_peak"] == 3 * GiB


def test_no_room_for_a_block_names_every_figure_and_the_fixes():
    memory = GpuMemory(total=8 * GiB, in_use=7 * GiB, activation_peak=GiB // 2, graph_reserve=0)
    with pytest.raises(ConfigError) as e:
        gpu_kv_budget(memory, 0.9, 2**20)
    message = str(e.value)
    for needle in (
        "cache.gpu_memory_fraction=0.9",
        "8.00 GiB",
        "7.00 GiB is in use",
        "0.50 GiB of activations",
        "scheduler.max_num_batched_tokens",
        "--tp",
    ):
        assert needle in message, message
    # exactly one block fits: served; one byte more does not
    one = GpuMemory(total=1000, in_use=400, activation_peak=90, graph_reserve=10)
    assert gpu_kv_budget(one, 0.6, 100) == 100
    with pytest.raises(ConfigError, match="less than one 101-byte block"):
        gpu_kv_budget(one, 0.6, 101)


@pytest.mark.parametrize("bad", ["0", "1", "1.0", "1.2", "-0.5"])
def test_gpu_memory_fraction_stays_below_one(bad):
    expected = rf"gpu_memory_fraction: {float(bad)}.*above 0 and below 1"
    with pytest.raises(ConfigError, match=expected):
        load_config(environ={}, cli=[("cache.gpu_memory_fraction", bad, "--set")])


def test_gpu_memory_fraction_in_range_is_taken():
    config = load_config(environ={}, cli=[("cache.gpu_memory_fraction", "0.95", "--set")])
    assert config.cache.gpu_memory_fraction == 0.95
    assert CacheConfig().gpu_memory_fraction == 0.85


def test_prefill_is_split_into_prompts_the_model_allows():
    assert prefill_lengths(4096, 8192) == [4096]
    assert prefill_lengths(4096, 1000) == [1000] * 4 + [96]
    assert prefill_lengths(3000, 1000) == [1000] * 3


def test_profiled_steps_write_only_the_scratch_block():
    block_size = 4
    prefill = _step([10, 7], 0, block_size)
    decode = _step([1] * 3, 9, block_size)  # each token after 9 cached: 10 keys
    for step in (prefill, decode):
        meta = build_attention_metadata(step, block_size, torch.device("cpu"))
        assert set((meta.slot_mapping // block_size).tolist()) == {SCRATCH_BLOCK}
    meta = build_attention_metadata(decode, block_size, torch.device("cpu"))
    assert meta.decode_slots.shape == (3, 10) and not meta.prefills


def test_budget_without_a_gpu_is_the_setting_or_the_cpu_default():
    runner = SimpleNamespace(device=torch.device("cpu"))
    set_ = load_config(environ={}, cli=[("cache.memory", "64MiB", "--set")])
    assert kv_cache_budget(set_, runner) == (64 * 2**20, {"budget_from": "cache.memory"})
    auto = load_config(environ={}, cli=[("cache.memory", "auto", "--set")])
    # (this machine has more than 2 x 512 MiB available, as a CI machine must)
    assert kv_cache_budget(auto, runner) == (CPU_DEFAULT_BUDGET, {"budget_from": "CPU default"})


def test_profiling_forwards_run_through_the_model_on_a_scratch_cache(tmp_path):
    # the same steps measure_gpu_memory runs on CUDA, on the CPU: valid shapes and tables
    path = write_checkpoint("llama_gqa_tied", tmp_path)
    runner = ModelRunner(path, ParallelContext.single(), torch.float32, "cpu", 4)
    runner.load_weights()
    runner.allocate_kv_cache(2)
    runner.kv_cache.zero_()
    with torch.inference_mode():
        _forward(runner, _step(prefill_lengths(40, 16), 0, runner.block_size))
        _forward(runner, _step([1] * 8, 15, runner.block_size))
    assert not runner.kv_cache[:, :, 0].any()  # block 0 (read for padding) stays zero
    assert runner.kv_cache[:, :, SCRATCH_BLOCK].any()
    for attn in runner.attention_layers:
        attn.unbind_cache()
        assert attn.k_cache is None and attn._slots is None
