"""One layer's view of the paged cache, and writing a step's K and V into it.

The cache keeps K and V of a slot side by side (kv_cache.py), in the order the QKV
projection lays them out, so a step's ``[T, 2, H_kv, D]`` slice of the projection
output is stored as it is. On CUDA with Triton available, one kernel writes every
token's row (one program per token); elsewhere one ``index_copy_``.
"""

from __future__ import annotations

import functools

import torch


def slot_view(k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """Both halves of one layer's cache as ``[num_slots, 2, H_kv, D]``."""
    # k_cache, v_cache: [num_blocks, block_size, H_kv, D], interleaved per slot
    nb, bs, h, d = k_cache.shape
    row = 2 * h * d
    interleaved = (
        k_cache.stride() == (bs * row, row, d, 1)
        and v_cache.stride() == k_cache.stride()
        and v_cache.data_ptr() == k_cache.data_ptr() + h * d * k_cache.element_size()
    )
    assert interleaved, "k_cache and v_cache must be the halves of one KVCacheSpec.allocate"
    return k_cache.as_strided((nb * bs, 2, h, d), (row, h * d, d, 1))


@functools.cache
def _triton_kernel():  # built on first use: importing triton costs time and needs a GPU build
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def store_kv(kv_ptr, src_stride, cache_ptr, slot_ptr, row: tl.constexpr, block: tl.constexpr):
        token = tl.program_id(0)
        slot = tl.load(slot_ptr + token)
        offs = tl.arange(0, block)
        mask = offs < row
        kv = tl.load(kv_ptr + token * src_stride + offs, mask=mask)
        tl.store(cache_ptr + slot * row + offs, kv, mask=mask)

    return triton, store_kv


def store_kv(kv: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor) -> None:
    # kv: [T, 2, H_kv, D], rows may be strided; cache: [num_slots, 2, H_kv, D]; slots: [T]
    kernel = _triton_kernel() if kv.is_cuda else None
    if kernel is None:
        cache.index_copy_(0, slots, kv)
        return
    triton, store = kernel
    if not kv[0].is_contiguous():
        kv = kv.contiguous()
    row = kv[0].numel()
    src_stride = kv.stride(0) if kv.shape[0] > 1 else row
    store[(kv.shape[0],)](kv, src_stride, cache, slots, row=row, block=triton.next_power_of_2(row))
