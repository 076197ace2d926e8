"""GPU paths: CUDA model runner, the Triton KV store, bf16, NCCL. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from rt.plugins.tp.layers.kv_store import store_kv
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from .tiny_models import BlockTables, full_logits, load_reference, random_prompt, write_checkpoint

pytestmark = pytest.mark.gpu


def test_triton_kv_store_equals_index_copy():
    device = torch.device("cuda")
    # kv: [7, 2, 2, 12], a column slice of a wider projection output (strided rows)
    qkv = torch.randn(7, 24 + 48, device=device)
    kv = qkv[:, 24:].view(7, 2, 2, 12)
    slots = torch.tensor([5, 0, 17, 3, 9, 30, 2], device=device)
    ours = torch.zeros(32, 2, 2, 12, device=device)
    store_kv(kv, ours, slots)
    ref = torch.zeros_like(ours).index_copy_(0, slots, kv)
    assert torch.equal(ours, ref)


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
