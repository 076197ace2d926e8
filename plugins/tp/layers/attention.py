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
from rt.plugins.tp.layers import compiled_ops  # noqa: F401  (registers rt::paged_attention)
from rt.plugins.tp.layers.attention_metadata import AttentionMetadata
from rt.plugins.tp.layers.kv_store import slot_view, store_kv
from rt.plugins.tp.layers.module import Module


class Attention(Module):
    """Attention of one layer's local heads over the paged KV cache.

    The runner binds ``k_cache`` and ``v_cache`` (each ``[num_blocks, block_size,
    H_kv_local, D]``, the two halves of one ``KVCacheSpec.allocate`` layer, block 0
    zeroed so padded slots hold no NaN) before the first step.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.layer_index = -1  # its place in the model, for a compiled step's operator
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None
        self._slots: torch.Tensor | None = None  # [num_slots, 2, Hkv, D] over k/v_cache
        self._slots_of: torch.Tensor | None = None  # the k_cache _slots was made from

    def unbind_cache(self) -> None:
        """Drop every reference to the bound cache (the kv-cache stage's scratch cache
        must be freed before the real one is sized)."""
        self.k_cache = self.v_cache = self._slots = self._slots_of = None

    def forward(self, q: torch.Tensor, kv: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        # q: [T, Hq, D]; kv: [T, 2, Hkv, D] (this step's K and V) -> out: [T, Hq, D]
        assert self.k_cache is not None, "KV cache not allocated: call allocate_kv_cache first"
        if self._slots_of is not self.k_cache:
            self._slots, self._slots_of = slot_view(self.k_cache, self.v_cache), self.k_cache
        slots = self._slots
        store_kv(kv, slots, meta.slot_mapping)
        od = None
        if meta.decode_slots is not None:
            bd, lmax = meta.decode_slots.shape
            # One index_select gathers K and V: in a SmolLM2 decode profile it takes ~38 us
            # per layer where two tensor[index] gathers took ~70-120 us each.
            ctx = slots.index_select(0, meta.decode_slots.view(-1)).view(bd, lmax, *slots.shape[1:])
            kd, vd = ctx[:, :, 0].transpose(1, 2), ctx[:, :, 1].transpose(1, 2)  # [Bd, Hkv, L, D]
            # One decoding sequence has no padded keys: no mask saves ~5 us per layer.
            mask = meta.decode_mask if bd > 1 else None
            if not meta.prefills:  # a pure decode step: no scatter needed
                return self._sdpa(q.unsqueeze(2), kd, vd, mask).squeeze(2)
            od = self._sdpa(q[meta.decode_token_idx].unsqueeze(2), kd, vd, mask)  # [Bd, Hq, 1, D]
        out = torch.empty_like(q)
        if od is not None:
            out[meta.decode_token_idx] = od.squeeze(2)
        # Prefill tensors are 4-D with a batch of one: SDPA's flash and memory-efficient
        # CUDA kernels take only [B, H, L, D] (3-D input falls back to the math kernel).
        for p in meta.prefills:
            rows = slice(p.token_start, p.token_start + p.num_tokens)
            qp = q[rows].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
            if p.context_slots is None:
                kp, vp = kv[rows].permute(1, 2, 0, 3).unsqueeze(1)  # each [1, Hkv, n, D]
                op = self._sdpa(qp, kp, vp, None, causal=True)
            else:
                ctx = slots.index_select(0, p.context_slots)  # [L, 2, Hkv, D]
                kp, vp = ctx.permute(1, 2, 0, 3).unsqueeze(1)  # each [1, Hkv, L, D]
                op = self._sdpa(qp, kp, vp, p.mask)  # mask: [n, L], broadcast over B, H
            out[rows] = op[0].transpose(0, 1)
        return out

    def _sdpa(self, q, k, v, mask, causal: bool = False) -> torch.Tensor:
        # q: [B, Hq, n, D]; k, v: [B, Hkv, L, D] -> [B, Hq, n, D]
        grouped = self.num_heads != self.num_kv_heads
        if grouped and q.is_cuda and (mask is not None or q.dtype == torch.float32):
            # Of CUDA's fused kernels only flash takes grouped heads, and flash takes
            # neither a mask nor float32: there the memory-efficient kernel must run, and
            # it does not take grouped heads, so SDPA would fall back to the math kernel
            # (it materializes [B, Hq, n, L] scores). Repeat K/V per group instead.
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            grouped = False
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale, enable_gqa=grouped
        )
