"""One layer's view of the paged cache, and writing a step's K and V into it.

The cache keeps K and V of a slot side by side (kv_cache.py), in the order the QKV
projection lays them out, so a step's ``[T, 2, H_kv, D]`` slice of the projection
output is stored as it is. On CUDA one Triton kernel writes every token's row (one
program per token); elsewhere, or once Triton has failed in this process, one
``index_copy_``.

Triton can fail in more ways than a missing import: no C compiler or Python headers
to build its launcher, a compile error for this GPU, a driver it does not support.
Any failure switches this process to ``index_copy_`` for good (same result, one more
copy of strided rows) and is kept in :data:`RECORD`, which the kv-cache stage and the
warm-up note in the timeline, and logged once.
"""

from __future__ import annotations

import functools
import logging

import attrs
import torch

log = logging.getLogger("rt.kv_store")


@attrs.define
class KVStoreRecord:
    """How this process stores K/V: ``fallback`` is why Triton is not used (None while
    it is, or before the first CUDA store); ``triton_stores`` counts kernel launches."""

    fallback: str | None = None
    triton_stores: int = 0

    def describe(self) -> str:
        """For the timeline: "triton", "index_copy (triton failed: ...)" or "index_copy"."""
        if self.fallback is not None:
            return f"index_copy (triton failed: {self.fallback})"
        return "triton" if self.triton_stores else "index_copy"


RECORD = KVStoreRecord()


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
    import triton
    import triton.language as tl

    @triton.jit
    def store_kv(kv_ptr, src_stride, cache_ptr, slot_ptr, row: tl.constexpr, block: tl.constexpr):
        token = tl.program_id(0)
        slot = tl.load(slot_ptr + token)
        offs = tl.arange(0, block)
        mask = offs < row
        kv = tl.load(kv_ptr + token * src_stride + offs, mask=mask)
        tl.store(cache_ptr + slot * row + offs, kv, mask=mask)

    return triton, store_kv


def _wants_triton(kv: torch.Tensor) -> bool:
    return kv.is_cuda and RECORD.fallback is None


def _triton_store(kv: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor) -> None:
    triton, store = _triton_kernel()
    if not kv[0].is_contiguous():
        kv = kv.contiguous()
    row = kv[0].numel()
    src_stride = kv.stride(0) if kv.shape[0] > 1 else row
    # Triton launches on the thread's current device, not the tensors': a rank on
    # cuda:1 stepping from a thread whose current device is cuda:0 would write GPU 1's
    # memory from GPU 0.
    with torch.cuda.device(kv.device):
        store[(kv.shape[0],)](
            kv, src_stride, cache, slots, row=row, block=triton.next_power_of_2(row)
        )


def store_kv(kv: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor) -> None:
    # kv: [T, 2, H_kv, D], rows may be strided; cache: [num_slots, 2, H_kv, D]; slots: [T]
    if _wants_triton(kv):
        try:
            _triton_store(kv, cache, slots)
            RECORD.triton_stores += 1
            return
        except Exception as e:  # ImportError, a compile error, no C compiler, ...
            _fall_back(e)
    cache.index_copy_(0, slots, kv)


def _fall_back(error: Exception) -> None:
    lines = str(error).strip().splitlines()
    RECORD.fallback = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    log.warning("rt: warning: the Triton KV-cache store failed (%s); using index_copy_", error)


def probe(device: torch.device, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> str:
    """Store one row, then two, of a layer's shape on ``device``, so Triton builds the
    kernel the steps will launch now, during startup (not in the first request nor in
    a CUDA graph's capture); returns :meth:`KVStoreRecord.describe`."""
    cache = torch.zeros(4, 2, num_kv_heads, head_dim, dtype=dtype, device=device)
    for n in (1, 2):
        kv = torch.ones(n, 2, num_kv_heads, head_dim, dtype=dtype, device=device)
        store_kv(kv, cache, torch.arange(n, device=device))
    return RECORD.describe()
