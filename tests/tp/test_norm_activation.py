"""RMSNorm and SiluAndMul compute what HF's formulas do, on every path (the CPU float32
norm goes through LayerNorm over [x, -x]); the residual sum comes back in place."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rt.plugins.tp.layers.activation import SiluAndMul
from rt.plugins.tp.layers.layernorm import RMSNorm


def _reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # HF LlamaRMSNorm
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _norm(hidden: int, dtype: torch.dtype, eps: float = 1e-5) -> RMSNorm:
    norm = RMSNorm(hidden, eps)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden))
    return norm.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7])
def test_rms_norm_matches_hf(dtype, tokens):
    norm = _norm(576, dtype)
    x = (torch.randn(tokens, 576) * 3).to(dtype)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(norm(x), _reference(x, norm.weight, norm.eps), **tol)


def test_rms_norm_adds_the_residual_in_place_and_returns_the_sum():
    norm = _norm(64, torch.float32)
    x, residual = torch.randn(3, 64), torch.randn(3, 64)
    expected_sum = x + residual
    out, summed = norm(x, residual)
    assert summed is residual
    torch.testing.assert_close(summed, expected_sum)
    torch.testing.assert_close(out, _reference(expected_sum, norm.weight, norm.eps))


def test_rms_norm_follows_a_weight_loaded_after_first_use():
    norm = _norm(64, torch.float32)
    x = torch.randn(2, 64)
    norm(x)
    norm.weight.data = torch.randn(64)  # e.g. prepared weights mapped in later
    torch.testing.assert_close(norm(x), _reference(x, norm.weight, norm.eps))


@pytest.mark.parametrize("tokens", [1, 5])
def test_silu_and_mul_matches_the_formula(tokens):
    x = torch.randn(tokens, 2 * 96)
    gate, up = x.clone().chunk(2, dim=-1)
    torch.testing.assert_close(SiluAndMul()(x), F.silu(gate) * up)
