"""How CPU ranks store their matrices, so the decode step's GEMVs stream at full speed.

Decoding one token multiplies a single row by every weight matrix: ~540 MB of
float32 reads per token for SmolLM2, bound by memory bandwidth, not arithmetic.
Measured on a 2-core EPYC (Zen 4), 30 layers plus the LM head per token:

* MKL's GEMV reaches ~15 GB/s on one core whatever the thread count (on two threads
  it is slower, ~13 GB/s), ~36 ms a token.
* Splitting each matrix by output features into one block per thread and running the
  blocks as one ``bmm`` (one block per thread) streams ~1.5x faster.
* Which way round the ``bmm`` runs matters as much: ``y^T = W x^T`` over row-major
  blocks ``[P, h, in]`` took 14-20 ms a token where ``y = x W^T`` over column-major
  blocks ``[P, in, h]`` took 23-26 ms, and it keeps that lead for a few tokens at once
  (T=2: 16-22 against 39-41 ms; T=4: 27-33 against 38-43 ms), so decode steps and small
  batches gain most. Past ~16 tokens (prefill) transposing its ``[P, h, T]`` output
  costs more than the product saves, and ``y = x W^T`` over the same row-major blocks
  (viewed transposed) is as fast as the column-major blocks were (:data:`GEMV_MAX_TOKENS`).

That gain belongs to that CPU: on a 2-core Intel Xeon with AMX, MKL's plain
GEMV used both threads at ~17 GB/s and the split ``bmm`` took twice as long (~99
against ~49 ms a token). So ``parts`` is measured per machine (layout_probe.py): the
number of threads when the split wins there, else 1.

With ``parts > 1`` each linear weight ``W [out, in]`` is split by output rows into ``parts``
row-major blocks, held as the ``[parts, in, out/parts]`` view of that ``[parts,
out/parts, in]`` memory (:func:`split_weight`); ``linear`` multiplies each block by
``x^T`` in one ``bmm``, whose output, for one token, already sits in ``[1, out]``
order. With one part (one thread per rank), or blocks too narrow to be worth a
thread, matrices stay 2-D: column-major for tall ones, row-major for wide ones.

The logical weight is unchanged; :func:`logical` rebuilds it, and
:func:`storage_form` / :func:`from_storage` name the layout so prepared weights can
be saved and mapped back without a copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rt.plugins.tp.layers.int4 import int4_linear

# A block narrower than this gains nothing from its own thread.
MIN_BLOCK_COLUMNS = 32
# Up to this many tokens a step multiplies W x^T (one pass over the weights that serves
# every token); beyond, x W^T with a cheaper output copy: the two met at 16 tokens
# (62 ms a pass over SmolLM2's layers), and at 64 x W^T took 156 ms against 194.
GEMV_MAX_TOKENS = 16


def _tall(out_features: int, in_features: int) -> bool:
    # For a 2-D weight under F.linear, column-major is faster for tall and square
    # matrices, row-major for wide ones: 288 vs 337-351 us per token for SmolLM2's
    # [576, 1536] down_proj.
    return out_features >= in_features


def split_weight(weight: torch.Tensor, parts: int) -> torch.Tensor:
    """``weight [out, in]`` in its decode layout: the ``[parts, in, out/parts]`` view of
    row-major blocks, or 2-D (same values, faster memory order) when it does not split
    into ``parts`` blocks."""
    out_features, in_features = weight.shape
    h = out_features // parts if parts > 1 else 0
    if parts <= 1 or out_features % parts or h < MIN_BLOCK_COLUMNS:
        if _tall(out_features, in_features):
            return weight.t().contiguous().t()
        return weight.contiguous()
    # block p: output rows [p*h, (p+1)*h), row-major: W's own memory order
    return weight.reshape(parts, h, in_features).contiguous().transpose(1, 2)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for a weight in either layout. x: [T, in] -> [T, out]."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    parts, in_features, h = weight.shape
    tokens = x.shape[0]
    if tokens > GEMV_MAX_TOKENS:
        # y = x W^T, blockwise: [P, T, in] @ [P, in, h] -> [P, T, h], then [T, P*h]:
        # for many tokens this output's copy is cheaper than transposing [P, h, T].
        y = torch.bmm(x.unsqueeze(0).expand(parts, tokens, in_features), weight)
        y = y.transpose(0, 1).reshape(tokens, parts * h)
        return y if bias is None else y.add_(bias)
    # y^T = W x^T, blockwise: [P, h, in] @ [P, in, T] -> [P, h, T]. x^T stays a view:
    # MKL takes it as a transposed operand (a contiguous copy was 4x slower at T=2).
    y = torch.bmm(weight.transpose(1, 2), x.t().unsqueeze(0).expand(parts, in_features, tokens))
    # One token: [P, h, 1] is already [1, P*h] in memory; more need a transposing copy.
    y = y.view(1, parts * h) if tokens == 1 else y.permute(2, 0, 1).contiguous().view(tokens, -1)
    return y if bias is None else y.add_(bias)


def module_linear(
    module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """:func:`linear` for ``module``'s own weight, keeping ``W^T`` as a view between calls.

    ``F.linear`` dispatches linear -> matmul -> t -> mm on every call; ``torch.mm`` on
    a kept transposed view is one operator. Between the decode step's weight passes,
    which evict the dispatcher's code and data from the caches, each operator costs
    microseconds: over SmolLM2's 121 matmuls a step, ~3 ms of ~48 (faster in 11 of 12
    interleaved rounds on the 2-core VM). Same BLAS call, same result. The view is
    remade when the weight's storage or strides change (re-layout, reload).

    A module quantized to int4 (layers/int4.py) multiplies by its packed weight.
    """
    group = module.__dict__.get("int4_group")
    if group is not None:
        return int4_linear(x, weight, module.weight_scale_zero, module.weight_dense, group, bias)
    if weight.dim() != 2 or x.dim() != 2 or torch.compiler.is_dynamo_compiling():
        # a compiled step fuses around the matmul itself; the kept view would be a guard
        return linear(x, weight, bias)
    key = (weight.data_ptr(), weight.stride())
    kept = module.__dict__.get("_weight_t")  # not a buffer: never saved or moved
    if kept is None or kept[0] != key:
        kept = module.__dict__["_weight_t"] = (key, weight.t())
    return torch.mm(x, kept[1]) if bias is None else torch.addmm(bias, x, kept[1])


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of ``weight [V, H]`` in either layout (a tied LM head is split)."""
    if weight.dim() == 2:
        return F.embedding(ids, weight)
    h = weight.shape[2]
    return weight[ids // h, :, ids % h]  # [T, H]


def apply_decode_layout(model: torch.nn.Module, parts: int) -> None:
    """Re-lay out the weight of every module whose class sets ``decode_layout = True``
    (the linear layers and the LM head; a tied embedding shares the head's tensor)."""
    seen: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (
            getattr(module, "decode_layout", False)
            and "int4_group" not in module.__dict__  # packed for its kernel already
            and weight is not None
            and id(weight) not in seen
        ):
            seen.add(id(weight))
            weight.data = split_weight(weight.data, parts)


def logical_shape(weight: torch.Tensor) -> tuple[int, ...]:
    """The ``[out, in]`` shape of a weight in either layout."""
    if weight.dim() != 3:
        return tuple(weight.shape)
    parts, in_features, h = weight.shape
    return (parts * h, in_features)


def logical(weight: torch.Tensor) -> torch.Tensor:
    """The ``[out, in]`` matrix a weight in either layout stands for (other tensors
    are returned as they are)."""
    if weight.dim() != 3:
        return weight
    parts, in_features, h = weight.shape
    return weight.transpose(1, 2).reshape(parts * h, in_features)


def storage_form(weight: torch.Tensor) -> tuple[torch.Tensor, str]:
    """A contiguous tensor holding ``weight``'s memory, and the layout tag that
    :func:`from_storage` turns back into ``weight`` (a view, no copy)."""
    if weight.is_contiguous():
        return weight, ""
    if weight.dim() == 2 and weight.t().is_contiguous():
        return weight.t(), "t"
    if weight.dim() == 3 and weight.transpose(1, 2).is_contiguous():
        return weight.transpose(1, 2), "row"
    return weight.contiguous(), ""


def from_storage(stored: torch.Tensor, tag: str) -> torch.Tensor:
    """Inverse of :func:`storage_form`."""
    if tag == "t":
        return stored.t()
    if tag == "row":
        return stored.transpose(1, 2)
    return stored
