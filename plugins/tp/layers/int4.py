"""Weight-only int4 linear layers for CPU ranks (4-bit weights, bfloat16 matmul).

A CPU decode step is bound by reading the weights: SmolLM2's ~540 MB of float32 per
token. Its GGUF source holds them in 4 bits (Q4_1: per 32 weights a scale ``d`` and a
minimum ``m``, ``w = d*q + m`` with ``q`` in 0..15), so float32 spends 8x the bytes on
the same values. torch's CPU int4 kernel (``_weight_int4pack_mm_for_cpu``) multiplies
bfloat16 activations by such weights directly: per group of ``group`` input features
and output feature ``n``, ``w = (q - 8) * scale + zero``; for Q4_1 that is ``scale = d``
and ``zero = m + 8d``, the same numbers. On a 2-core Xeon (AMX) a SmolLM2 decode step
went from ~43-50 ms to ~31-38 ms, its 120 int4 matmuls ~11 ms of it (microbenchmarked
alone, the decoder's matmuls took ~6 ms against ~30 ms in float32).

Quantization is round-to-nearest over each group's min..max, so for weights that came
from Q4_1 it finds the original ``q`` exactly (Q4_1 maps each block's min to 0 and
max to 15); scale and zero are kept in bfloat16 (the kernel's dtype), ~0.2% relative.
Activations stay float32 around the matmul: norms, rotary, attention and the KV cache
are unchanged. The embedding and LM head stay dense (a tied head shares the
embedding's float32 table).

The int4 kernel's cost grows with the tokens in a step (it dequantizes for each row
block), while a bfloat16 GEMM (oneDNN, AMX here) barely notices up to ~40 tokens. Over
SmolLM2's decoder matmuls on this Xeon: 4 tokens ~15 ms int4 against 29 ms bfloat16,
8 tokens ~25 against 30, 16 tokens ~46 against 46, 128 tokens ~350 against ~115, 512
tokens 1.4-1.7 s against 0.33-0.36 s (float32: 1.0-1.2 s). So each layer also keeps the
same weights as a dense bfloat16 matrix (the int4 values rounded to bfloat16) and steps of
more than :data:`INT4_MAX_TOKENS` tokens (prefill, large batches) multiply by that:
2.6 bytes a weight in all, against float32's 4.

That copy pays only where the CPU multiplies bfloat16 in hardware (AMX, AVX512-BF16:
``rt.core.host.native_bf16``). On an AVX2-only CPU (an AMD EPYC here) a bfloat16 GEMM is
emulated: one ``[1536, 576]`` matmul of 16 tokens took 1.65 ms against 0.52 ms in the
int4 kernel and 0.35 ms in float32, of 64 tokens 6.1 against 1.6 and 0.9 ms. There the
layers keep no copy (an empty tensor stands in for it) and every step runs the int4
kernel: 0.5 bytes a weight.
"""

from __future__ import annotations

import torch
from rt.core.host import native_bf16
from torch import nn

GROUP_SIZE = 32
# Steps of up to this many tokens use the int4 kernel, longer ones the bfloat16 copy.
INT4_MAX_TOKENS = 8
# _convert_weight_to_int4pack_for_cpu packs output features in blocks of 16.
_N_MULTIPLE = 16


def supports(out_features: int, in_features: int, group: int = GROUP_SIZE) -> bool:
    """Whether an ``[out, in]`` weight fits the kernel's packing."""
    return out_features % _N_MULTIPLE == 0 and in_features % group == 0


def _groups(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` -> (q ``[N, K/group, group]`` float32 holding 0..15, scale_zero
    ``[K/group, N, 2]`` bf16)."""
    # A few passes, mostly in place: the sequential path quantizes SmolLM2's 106 M
    # weights on one thread at every start.
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)  # [N, K/group]; 2x faster than aminmax here
    scale = (hi - lo).div_(15)
    inv = torch.where(scale > 0, scale, 1.0).reciprocal_()
    q = (w - lo.unsqueeze(-1)).mul_(inv.unsqueeze(-1)).round_().clamp_(0, 15)
    zero = lo.add_(scale, alpha=8)  # (q - 8) * scale + zero == q * scale + lo
    scale_zero = torch.stack([scale, zero], -1).transpose(0, 1).to(torch.bfloat16)
    return q, scale_zero.contiguous()


def _dense(q: torch.Tensor, scale_zero: torch.Tensor) -> torch.Tensor:
    """``(q - 8) * scale + zero`` in float32 ``[N, K]``, with the kernel's bf16 scale and
    zero; q ``[N, K/group, group]`` is consumed."""
    scale, zero = scale_zero.float().transpose(0, 1).unbind(-1)  # [N, K/group] each
    dense = q.sub_(8).mul_(scale.unsqueeze(-1)).add_(zero.unsqueeze(-1))  # in place: no copy
    return dense.reshape(q.shape[0], -1)


def keeps_dense_copy() -> bool:
    """Whether int4 layers keep a bfloat16 copy for long steps (native bfloat16 only)."""
    return native_bf16()


def no_dense_copy(device: str | torch.device = "cpu") -> torch.Tensor:
    """What stands in for the bfloat16 copy where there is none."""
    return torch.empty(0, dtype=torch.bfloat16, device=device)


def quantize(
    weight: torch.Tensor, group: int = GROUP_SIZE, dense_copy: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``weight [N, K]`` -> (packed ``[N, K/2]`` uint8, scale_zero ``[K/group, N, 2]`` bf16,
    the same matrix dense ``[N, K]`` bf16, or an empty tensor without ``dense_copy``;
    None: :func:`keeps_dense_copy`)."""
    q, scale_zero = _groups(weight, group)
    packed = torch._convert_weight_to_int4pack_for_cpu(q.reshape(weight.shape).to(torch.int32), 1)
    if not (keeps_dense_copy() if dense_copy is None else dense_copy):
        return packed, scale_zero, no_dense_copy()
    return packed, scale_zero, _dense(q, scale_zero).to(torch.bfloat16)


def dequantize(weight: torch.Tensor, group: int = GROUP_SIZE) -> torch.Tensor:
    """The float32 ``[N, K]`` matrix that ``quantize(weight)`` stands for."""
    return _dense(*_groups(weight, group))


def int4_linear(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scale_zero: torch.Tensor,
    dense: torch.Tensor,
    group: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``x W^T + b`` for a quantized weight; x: [T, K] in any float dtype -> [T, N] like x."""
    # The kernel needs a contiguous x. Converting float32 copies into a contiguous
    # tensor; a bfloat16 x is passed on as it is, and may be a view (the norm's output
    # is a narrow of [T, 2K]: strided once T > 1).
    xb = x.to(torch.bfloat16) if x.dtype != torch.bfloat16 else x.contiguous()
    if x.shape[0] > INT4_MAX_TOKENS and dense.numel():
        y = torch.mm(xb, dense.t())
    else:
        y = torch._weight_int4pack_mm_for_cpu(xb, packed_weight, group, scale_zero)
    y = y.to(x.dtype)
    return y if bias is None else y.add_(bias)


def _linear_layers(model: nn.Module) -> list[nn.Module]:
    from rt.plugins.tp.layers.linear import LinearBase  # linear.py imports this module

    return [m for m in model.modules() if isinstance(m, LinearBase)]


def _targets(model: nn.Module) -> list[nn.Module]:
    # The linear layers only: the LM head stays dense (a tied one is the embedding's
    # table, which the embedding reads row by row).
    return [m for m in _linear_layers(model) if supports(*m.weight.shape, GROUP_SIZE)]


def _set(
    module: nn.Module, packed: torch.Tensor, scale_zero: torch.Tensor, dense: torch.Tensor
) -> None:
    loader = getattr(module.weight, "weight_loader", None)
    module.weight = nn.Parameter(packed, requires_grad=False)
    if loader is not None:
        module.weight.weight_loader = loader
    module.weight_scale_zero = nn.Parameter(scale_zero, requires_grad=False)
    module.weight_dense = nn.Parameter(dense, requires_grad=False)
    module.int4_group = GROUP_SIZE


def quantize_model(model: nn.Module) -> int:
    """Replace each eligible linear layer's loaded float weight by its int4 form; returns
    how many layers were quantized."""
    targets = _targets(model)
    for module in targets:
        _set(module, *quantize(module.weight.data, GROUP_SIZE))
    return len(targets)


def int4_shell(model: nn.Module) -> int:
    """Give a model built on the meta device the int4 parameter shapes, so prepared
    int4 weights (saved from :func:`quantize_model`'s result) can be mapped into it;
    returns how many layers took them."""
    targets = _targets(model)
    for module in targets:
        n, k = module.weight.shape
        packed = torch.empty(n, k // 2, dtype=torch.uint8, device="meta")
        scale_zero = torch.empty(k // GROUP_SIZE, n, 2, dtype=torch.bfloat16, device="meta")
        if keeps_dense_copy():
            dense = torch.empty(n, k, dtype=torch.bfloat16, device="meta")
        else:
            dense = no_dense_copy("meta")
        _set(module, packed, scale_zero, dense)
    return len(targets)


def count_linear_layers(model: nn.Module) -> int:
    """The linear layers of ``model``, packable or not (the denominator of a timeline note)."""
    return len(_linear_layers(model))
