"""Paged attention on plain torch: store the step's K/V into the block cache, then attend.

A token at position ``pos`` of a sequence lives in cache slot
``block_table[pos // block_size] * block_size + pos % block_size``. Decoding
sequences (one new token each) are attended in one batched SDPA call over their
gathered, padded contexts; sequences with several new tokens (prefill, chunked
prefill) are attended one by one, causally, and a fresh prompt skips the gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rt.plugins.tp.layers.attention_metadata import AttentionMetadata
from rt.plugins.tp.layers.kv_store import store_kv
from torch import nn


class Attention(nn.Module):
    """Attention of one layer's local heads over the paged KV cache.

    The runner binds ``k_cache`` and ``v_cache`` (each ``[num_blocks, block_size,
    H_kv_local, D]``, zero-initialised so padded slots hold no NaN) before the first step.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        # q: [T, Hq, D]; k, v: [T, Hkv, D] -> out: [T, Hq, D]
        assert self.k_cache is not None, "KV cache not allocated: call allocate_kv_cache first"
        k_flat = self.k_cache.view(-1, self.num_kv_heads, self.head_dim)  # [slots, Hkv, D]
        v_flat = self.v_cache.view(-1, self.num_kv_heads, self.head_dim)
        store_kv(k, v, k_flat, v_flat, meta.slot_mapping)
        kd = vd = None
        if meta.decode_slots is not None:
            kd = k_flat[meta.decode_slots].transpose(1, 2)  # [Bd, Hkv, Lmax, D]
            vd = v_flat[meta.decode_slots].transpose(1, 2)
        if not meta.prefills and kd is not None:  # a pure decode step: no scatter needed
            return self._sdpa(q.unsqueeze(2), kd, vd, meta.decode_mask).squeeze(2)
        out = torch.empty_like(q)
        if kd is not None:
            idx = meta.decode_token_idx
            od = self._sdpa(q[idx].unsqueeze(2), kd, vd, meta.decode_mask)  # [Bd, Hq, 1, D]
            out[idx] = od.squeeze(2)
        for p in meta.prefills:
            rows = slice(p.token_start, p.token_start + p.num_tokens)
            qp = q[rows].transpose(0, 1)  # [Hq, n, D]
            if p.context_slots is None:
                kp, vp = k[rows].transpose(0, 1), v[rows].transpose(0, 1)  # [Hkv, n, D]
                op = self._sdpa(qp, kp, vp, None, causal=True)
            else:
                kp = k_flat[p.context_slots].transpose(0, 1)  # [Hkv, L, D]
                vp = v_flat[p.context_slots].transpose(0, 1)
                op = self._sdpa(qp, kp, vp, p.mask)
            out[rows] = op.transpose(0, 1)
        return out

    def _sdpa(self, q, k, v, mask, causal: bool = False) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
