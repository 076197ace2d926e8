"""GPU paths: device choice, the Triton KV store, the measured KV budget, bfloat16, the
fused SDPA kernels, CUDA model runner, NCCL. Skipped without CUDA.

Each test asks for the GPU itself (``--device cuda``, ``parallel.device``, a CUDA
tensor): the harness runs everything else on the CPU (tests/conftest.py).
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from rt.core.step import SeqStep, StepMetadata
from rt.plugins.tp.kv_cache import KVCacheSpec
from rt.plugins.tp.layers import kv_store
from rt.plugins.tp.layers.attention import Attention
from rt.plugins.tp.layers.attention_metadata import build_attention_metadata
from rt.plugins.tp.layers.kv_store import store_kv
from rt.plugins.tp.memory_profile import _step, prefill_lengths
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from tests.conftest import run_rt
from tests.engine_e2e.engine_helpers import start_runtime
from tests.serving_models import write_servable_model

from .tiny_models import BlockTables, full_logits, load_reference, random_prompt, write_checkpoint

pytestmark = pytest.mark.gpu
PROMPT = "The quick brown fox"


def _hook_notes(runtime, stage: str) -> dict:
    return next(s.notes for s in runtime.timeline.spans() if s.stage == stage and s.kind == "hook")


def _strided_kv(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # kv: [7, 2, 2, 12], a column slice of a wider projection output (strided rows)
    qkv = torch.randn(7, 24 + 48, device=device)
    slots = torch.tensor([5, 0, 17, 3, 9, 30, 2], device=device)
    return qkv[:, 24:].view(7, 2, 2, 12), slots


def test_triton_kv_store_runs_and_equals_index_copy():
    kv, slots = _strided_kv(torch.device("cuda"))
    before = kv_store.RECORD.triton_stores
    ours = torch.zeros(32, 2, 2, 12, device="cuda")
    store_kv(kv, ours, slots)
    assert kv_store.RECORD.fallback is None, kv_store.RECORD.fallback
    assert kv_store.RECORD.triton_stores == before + 1  # the kernel ran, not index_copy_
    ref = torch.zeros_like(ours).index_copy_(0, slots, kv)
    assert torch.equal(ours, ref)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_store_on_the_second_gpu_from_a_thread_whose_device_is_the_first():
    device = torch.device("cuda", 1)
    kv, slots = _strided_kv(device)
    ours = torch.zeros(32, 2, 2, 12, device=device)
    thread = threading.Thread(target=store_kv, args=(kv, ours, slots))  # current device: 0
    thread.start()
    thread.join()
    assert kv_store.RECORD.fallback is None, kv_store.RECORD.fallback
    assert torch.equal(ours, torch.zeros_like(ours).index_copy_(0, slots, kv))


def test_engine_on_cuda_notes_device_dtype_budget_and_kv_store(tmp_path):
    model = write_servable_model(tmp_path / "m")  # a float32 checkpoint
    runtime = start_runtime(model, ("parallel.device", "cuda"))
    try:
        runner = runtime.result("load-weights")
        assert runner.device.type == "cuda"
        assert runner.dtype == torch.bfloat16  # --dtype auto: bfloat16 on CUDA
        weights = _hook_notes(runtime, "load-weights")
        assert torch.cuda.get_device_name(runner.device) in weights["device"]
        assert weights["from"] == "checkpoint" and "off on CUDA" in weights["prepared_weights"]
        kv = _hook_notes(runtime, "kv-cache")
        assert kv["budget_from"] == "measured" and kv["activation_peak"] > 0
        assert 0 < kv["budget"] <= 0.85 * kv["gpu_total"] - kv["in_use_after_load"]
        assert kv["kv_store"] == "triton"
    finally:
        runtime.shutdown()


def test_kv_budget_leaves_room_for_the_largest_prefill(default_model_dir):
    from rt.core.config import SchedulerConfig

    runtime = start_runtime(default_model_dir, ("parallel.device", "cuda"))
    try:
        runner = runtime.result("load-weights")
        kv = _hook_notes(runtime, "kv-cache")
        free_after_load = kv["gpu_total"] - kv["in_use_after_load"]
        assert 0 < kv["budget"] < free_after_load
        assert runtime.result("kv-cache").bytes <= kv["budget"]
        tokens = SchedulerConfig().max_num_batched_tokens
        lengths = prefill_lengths(tokens, runner.model_config.max_model_len)
        runner.run(_step(lengths, 0, runner.block_size))  # the cache is allocated: no OOM
        torch.cuda.synchronize(runner.device)
    finally:
        runtime.shutdown()


def _attention_case(case: str, device: torch.device, dtype: torch.dtype):
    """An attention layer (8 query heads over 2 KV heads) on a cache, and steps for it."""
    heads, kv_heads, d, bs = 8, 2, 64, 16
    attn = Attention(heads, kv_heads, d, d**-0.5)
    cache = KVCacheSpec(1, bs, kv_heads, d, dtype).allocate(32, device)
    attn.k_cache, attn.v_cache = cache[0, 0], cache[1, 0]
    table = tuple(range(1, 9))  # 128 tokens
    prompt = SeqStep(0, (0,) * 100, 0, table)
    if case == "prompt":
        steps = [[prompt]]
    elif case == "continuation":  # a chunk over its cached context: a masked prefill
        steps = [[prompt], [SeqStep(0, (0,) * 20, 100, table)]]
    else:  # decoding sequences of different contexts: a masked, batched decode
        steps = [[prompt], [SeqStep(i, (0,), 40 + 30 * i, table) for i in range(3)]]
    return attn, [StepMetadata.from_seqs(i, seqs) for i, seqs in enumerate(steps)], heads, d


@pytest.mark.parametrize("case", ["prompt", "continuation", "decode"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float32, 1e-4)])
def test_attention_runs_on_fused_sdpa_kernels_and_matches_math(case, dtype, tol):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device("cuda")
    attn, steps, heads, d = _attention_case(case, device, dtype)
    torch.manual_seed(0)
    for step in steps:
        meta = build_attention_metadata(step, 16, device)
        q = torch.randn(step.num_tokens, heads, d, dtype=dtype, device=device)
        kv = torch.randn(step.num_tokens, 2, 2, d, dtype=dtype, device=device)
        # raises "No available kernel" where only the math kernel could take the call
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            fused = attn(q, kv, meta)
        with sdpa_kernel([SDPBackend.MATH]):
            math = attn(q, kv, meta)
        torch.testing.assert_close(fused.float(), math.float(), atol=tol, rtol=tol)


def test_too_many_ranks_for_the_gpus_fail_before_any_rank_starts(tmp_path):
    model = write_servable_model(tmp_path / "m")
    for rank0 in ("driver", "process"):  # with torch, and without it in the driver
        result = run_rt(
            "generate", str(model), PROMPT, "--tp", "2", "--device", "cuda",
            "--set", f"parallel.rank0={rank0}",
            env={"CUDA_VISIBLE_DEVICES": "0"},
        )  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if line.startswith("rt: error")]
        assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
        assert "2 ranks would run on this node but it has 1 visible GPU" in errors[0]


def _generate(model, *args: str) -> list[int]:
    result = run_rt(
        "generate", str(model), PROMPT, "--max-tokens", "16", "--json", "--device", "cuda",
        "--dtype", "float32", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["token_ids"]


def test_rank0_in_its_own_process_runs_on_the_gpu(tmp_path):
    model = write_servable_model(tmp_path / "m", seed=3)
    assert _generate(model, "--set", "parallel.rank0=process") == _generate(model)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_tp2_gives_the_tp1_tokens(tmp_path):
    # float32: TP changes only the order of the row-parallel sums
    model = write_servable_model(tmp_path / "m", seed=3)
    assert _generate(model, "--tp", "2") == _generate(model)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 5e-2)])
def test_cuda_runner_matches_transformers(tmp_path, dtype, tol):
    path = write_checkpoint("llama_gqa_tied", tmp_path)
    runner = ModelRunner(path, ParallelContext.single("cuda"), dtype, "cuda", 4)
    runner.load_weights()
    runner.allocate_kv_cache(64)
    prompt = random_prompt(13, runner.model_config.vocab_size, seed=1)
    ours = full_logits(runner, prompt, BlockTables(64, 4)).float().cpu()
    with torch.no_grad():
        theirs = load_reference(path)(torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)


def test_cuda_prompt_logprobs_match_transformers(tmp_path):
    # an echoed prompt's rows projected in slices on the device, reduced there
    from .tiny_models import (
        assert_prompt_logprobs_match,
        prompt_logprobs_in_chunks,
        reference_prompt_logprobs,
    )

    path = write_checkpoint("llama_odd", tmp_path)
    runner = ModelRunner(path, ParallelContext.single("cuda"), torch.float32, "cuda", 4)
    runner.load_weights()
    runner.allocate_kv_cache(64)
    prompt = random_prompt(40, runner.model_config.vocab_size, seed=3)
    got = prompt_logprobs_in_chunks(runner, prompt, 7, BlockTables(64, 4), 3)
    expected = reference_prompt_logprobs(load_reference(path), prompt)
    assert_prompt_logprobs_match(got, expected, prompt, 3, tol=1e-3)


def test_compiled_decode_equals_eager_on_cuda(tmp_path):
    from rt.plugins.compile import cache_entry, compile_now

    from .tiny_models import greedy_decode

    path = write_checkpoint("llama_gqa_tied", tmp_path / "model")
    runner = ModelRunner(path, ParallelContext.single("cuda"), torch.float32, "cuda", 4)
    runner.bind_compute_thread()
    runner.load_weights()
    runner.allocate_kv_cache(64)
    vocab = runner.model_config.vocab_size
    prompts = [random_prompt(n, vocab, seed=n) for n in (5, 11, 1)]
    eager = greedy_decode(runner, prompts, 32, BlockTables(64, 4))
    cache, seconds = compile_now(runner, str(tmp_path / "compile"))
    assert cache == "cold" and seconds > 0
    compiled = greedy_decode(runner, prompts, 32, BlockTables(64, 4))
    assert runner.compiled.steps > 0
    assert compiled == eager
    key, folder = cache_entry(runner, str(tmp_path / "compile"))
    assert key.device == torch.cuda.get_device_name(0)
    assert (folder / "manifest.json").is_file()
