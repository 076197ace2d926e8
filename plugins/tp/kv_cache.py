"""The paged KV cache: one tensor ``[2, L, num_blocks, block_size, H_kv_local, D]``.

Its memory is laid out ``[L, num_blocks, block_size, 2, H_kv_local, D]``: K and V of a
slot sit side by side, in the order the QKV projection produces them, so attention
stores a step's K and V with one ``index_copy_`` and gathers a context's K and V with
one ``index_select`` (see layers/kv_store.py). The ``[2, L, ...]`` view keeps
``cache[0, i]`` and ``cache[1, i]`` the K and V of layer ``i``.
"""

from __future__ import annotations

import attrs
import torch
from rt.core.errors import ConfigError


@attrs.frozen
class KVCacheSpec:
    """The shape of one rank's KV cache, less the number of blocks."""

    num_layers: int
    block_size: int
    num_kv_heads: int  # local to this rank
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        """K and V of ``block_size`` tokens in every layer."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * itemsize

    def num_blocks_for_budget(self, budget_bytes: int) -> int:
        """How many blocks fit in ``budget_bytes``; ConfigError if not even one does."""
        n = int(budget_bytes) // self.bytes_per_block
        if n < 1:
            raise ConfigError(
                f"a KV cache budget of {budget_bytes} bytes holds no block of "
                f"{self.bytes_per_block} bytes; raise the KV cache memory budget"
            )
        return n

    def allocate(self, num_blocks: int, device: torch.device) -> torch.Tensor:
        """Uninitialised except block 0, which attention reads for padded (masked) slots:
        masked garbage could be NaN, and NaN times a zero weight is still NaN. Every other
        slot is written before it is read. Not touching the rest keeps startup fast and
        lets the OS back the cache with memory only as blocks are used."""
        if num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {num_blocks}")
        shape = (self.num_layers, num_blocks, self.block_size, 2, self.num_kv_heads, self.head_dim)
        cache = torch.empty(shape, dtype=self.dtype, device=device).permute(3, 0, 1, 2, 4, 5)
        cache[:, :, 0].zero_()
        return cache  # [2, L, num_blocks, block_size, Hkv, D], K and V interleaved per slot


def bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    return KVCacheSpec(num_layers, block_size, num_kv_heads, head_dim, dtype).bytes_per_block


def num_blocks_for_budget(
    budget_bytes: int,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
) -> int:
    spec = KVCacheSpec(num_layers, block_size, num_kv_heads, head_dim, dtype)
    return spec.num_blocks_for_budget(budget_bytes)
