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
    k, v = torch.randn(7, 2, 12, device=device), torch.randn(7, 2, 12, device=device)
    slots = torch.tensor([5, 0, 17, 3, 9, 30, 2], device=device)
    ours_k, ours_v = torch.zeros(32, 2, 12, device=device), torch.zeros(32, 2, 12, device=device)
    store_kv(k, v, ours_k, ours_v, slots)
    ref_k, ref_v = torch.zeros_like(ours_k), torch.zeros_like(ours_v)
    ref_k.index_copy_(0, slots, k)
    ref_v.index_copy_(0, slots, v)
    assert torch.equal(ours_k, ref_k) and torch.equal(ours_v, ref_v)


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
