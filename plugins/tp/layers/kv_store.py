"""Writing a step's K and V into the paged cache.

On CUDA with Triton available, one fused kernel writes K and V for every token
(one program per token, a row of ``H_kv * D`` values each), replacing two
``index_copy_`` launches per layer. Elsewhere (CPU, or no Triton) ``index_copy_``.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _triton_kernel():  # built on first use: importing triton costs time and needs a GPU build
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def store_kv(
        k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, row: tl.constexpr, block: tl.constexpr
    ):
        token = tl.program_id(0)
        slot = tl.load(slot_ptr + token)
        offs = tl.arange(0, block)
        mask = offs < row
        k = tl.load(k_ptr + token * row + offs, mask=mask)
        v = tl.load(v_ptr + token * row + offs, mask=mask)
        tl.store(k_cache_ptr + slot * row + offs, k, mask=mask)
        tl.store(v_cache_ptr + slot * row + offs, v, mask=mask)

    return triton, store_kv


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_flat: torch.Tensor,
    v_flat: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    # k, v: [T, Hkv, D]; k_flat, v_flat: [num_slots, Hkv, D]; slots: [T] long
    kernel = _triton_kernel() if k.is_cuda else None
    if kernel is None:
        k_flat.index_copy_(0, slots, k)
        v_flat.index_copy_(0, slots, v)
        return
    triton, store = kernel
    row = k.shape[1] * k.shape[2]
    store[(k.shape[0],)](
        k.contiguous(),
        v.contiguous(),
        k_flat,
        v_flat,
        slots,
        row=row,
        block=triton.next_power_of_2(row),
    )
