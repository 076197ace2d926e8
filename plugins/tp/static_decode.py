"""A decode step of fixed shape and fixed addresses: what a CUDA graph captures.

A graph replays the same kernels on the same memory, so everything a decode step of
up to ``max_size`` sequences reads lives in :class:`DecodeBuffers`, filled before each
replay, and everything it computes has a fixed shape:

* ``size`` rows (the captured batch size): a step of ``n < size`` sequences is padded
  by repeating its first sequence. A padding row therefore computes what row 0 does,
  reads row 0's context and writes row 0's K/V to row 0's slot, byte for byte (the
  write takes row 0's values, ``kv_source``), so padding touches no other slot and
  leaves no trace: block 0 is an ordinary block that a sequence may own.
* ``width`` keys per sequence (``rt.core.graphs.decode_context_width``): each
  sequence's context slots are derived inside the graph from its block table and its
  length, and keys past the length read slot 0 (finite: zeroed at allocation, written
  only with real K/V) and are masked.

The model's body runs with ``meta=None`` (as a compiled step does), so attention goes
through the ``rt::paged_attention`` operator, which calls :class:`StaticDecodeAttention`
here instead of the eager ``Attention`` (layers/compiled_ops.py: ``step_context``).
Nothing here needs CUDA: on CPU the same code runs uncaptured (tests/tp/).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from rt.core.step import StepMetadata
from rt.plugins.tp.layers.attention_metadata import as_long, block_tables
from rt.plugins.tp.layers.compiled_ops import step_context
from rt.plugins.tp.layers.kv_store import slot_view, store_kv


@attrs.frozen
class StaticDecodeMeta:
    """What every layer's attention reads in a captured decode step of ``size`` rows."""

    slot_mapping: torch.Tensor  # [S] long: where each row's K/V goes
    kv_source: torch.Tensor  # [S] long: the row whose K/V each row writes (0 for padding)
    decode_slots: torch.Tensor  # [S, W] long: context slots, 0 past each context
    decode_mask: torch.Tensor  # [S, 1, 1, W] bool: key within the context
    # False while warming up outside a capture: rows write back what their slots hold,
    # so a warm-up between two steps leaves every sequence's cache as it was
    writes: bool = True


class DecodeBuffers:
    """The static inputs of decode steps of up to ``max_size`` sequences: one int64
    tensor on the device, seen as fields, and its twin on the host that each step is
    packed into and uploaded from in one copy."""

    FIELDS = ("input_ids", "positions", "slot_mapping", "kv_source", "context_lens")

    def __init__(self, max_size: int, width: int, block_size: int, device: torch.device) -> None:
        assert width % block_size == 0, (width, block_size)
        self.max_size, self.width, self.block_size = max_size, width, block_size
        self.max_blocks = width // block_size
        numel = len(self.FIELDS) * max_size + max_size * self.max_blocks
        self.device_buffer = torch.zeros(numel, dtype=torch.long, device=device)
        pinned = device.type == "cuda"  # an asynchronous upload needs pinned memory
        self.host_buffer = torch.zeros(numel, dtype=torch.long, pin_memory=pinned)
        self.device, self.host = self._fields(self.device_buffer), self._fields(self.host_buffer)
        self.uploaded = torch.cuda.Event() if pinned else None  # the host copy is free again
        key = torch.arange(width, device=device)  # [W]
        self.key_block, self.key_offset = key // block_size, key % block_size
        self.key = key

    def _fields(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.max_size
        out = {name: flat[i * n : (i + 1) * n] for i, name in enumerate(self.FIELDS)}
        out["block_tables"] = flat[len(self.FIELDS) * n :].view(n, self.max_blocks)  # [S, MB]
        return out

    def fits(self, step: StepMetadata) -> bool:
        """Whether ``step`` is a pure decode step (one new token per sequence) of at most
        ``max_size`` sequences whose contexts fit ``width``. Reads only the step's
        metadata, so every rank answers alike."""
        n = step.num_seqs
        return (
            0 < n <= self.max_size
            and step.num_tokens == n
            and max(step.start_positions) < self.width  # context = start + 1 keys
        )

    def load(self, step: StepMetadata, size: int) -> None:
        """Pack ``step`` (which fits) into the first ``size`` rows, padding by repeating
        row 0, and upload it (asynchronously on CUDA, ordered before the next replay)."""
        n, h = step.num_seqs, self.host
        ids, starts = as_long(step.token_ids), as_long(step.start_positions)  # [n]
        tables = block_tables(step)[:, : self.max_blocks]  # [n, <= MB]
        rows = torch.arange(n)
        slots = tables[rows, starts // self.block_size] * self.block_size
        slots += starts % self.block_size
        if self.uploaded is not None:
            self.uploaded.synchronize()  # the previous step's upload has read the host copy
        for name, values in (
            ("input_ids", ids),
            ("positions", starts),
            ("slot_mapping", slots),
            ("kv_source", rows),
            ("context_lens", starts + 1),
        ):
            h[name][:n] = values
            h[name][n:size] = values[0]
        h["kv_source"][n:size] = 0
        table = h["block_tables"]
        table[:n, : tables.shape[1]] = tables
        table[:n, tables.shape[1] :] = 0
        table[n:size] = table[0]
        self.device_buffer.copy_(self.host_buffer, non_blocking=self.uploaded is not None)
        if self.uploaded is not None:
            self.uploaded.record()

    def load_neutral(self) -> None:
        """Rows that read and write slot 0 only, with token 0 at position 0: the inputs
        of a warm-up (which writes slot 0 back as it is, ``StaticDecodeMeta.writes``)."""
        self.device_buffer.zero_()
        self.device["context_lens"].fill_(1)

    def decode_meta(self, size: int, writes: bool) -> StaticDecodeMeta:
        """The metadata of a step of ``size`` rows, computed on the device from the
        buffers (inside the graph when capturing)."""
        lens = self.device["context_lens"][:size]  # [S]
        tables = self.device["block_tables"][:size]  # [S, MB]
        in_ctx = self.key.unsqueeze(0) < lens.unsqueeze(1)  # [S, W]
        blocks = tables.gather(1, self.key_block.expand(size, -1))  # [S, W]
        slots = torch.where(in_ctx, blocks * self.block_size + self.key_offset, 0)
        return StaticDecodeMeta(
            slot_mapping=self.device["slot_mapping"][:size],
            kv_source=self.device["kv_source"][:size],
            decode_slots=slots,
            decode_mask=in_ctx[:, None, None, :],
            writes=writes,
        )


class StaticDecodeAttention:
    """One layer's decode attention over a fixed context width, on the layer's cache.

    Called by the ``rt::paged_attention`` operator in place of the layer's eager
    ``Attention`` (which picks its path and its gather width per step)."""

    def __init__(self, attn: torch.nn.Module) -> None:
        self.attn = attn  # the model's Attention: its cache, heads and scale

    def forward(self, q: torch.Tensor, kv: torch.Tensor, meta: StaticDecodeMeta) -> torch.Tensor:
        # q: [S, Hq, D]; kv: [S, 2, Hkv, D] -> out: [S, Hq, D]
        a = self.attn
        slots = slot_view(a.k_cache, a.v_cache)  # [num_slots, 2, Hkv, D]
        if meta.writes:
            src = kv.index_select(0, meta.kv_source)  # padding rows carry row 0's K/V
        else:
            src = slots.index_select(0, meta.slot_mapping)  # what the slots hold now
        store_kv(src, slots, meta.slot_mapping)
        s, width = meta.decode_slots.shape
        ctx = slots.index_select(0, meta.decode_slots.view(-1)).view(s, width, *slots.shape[1:])
        k, v = ctx[:, :, 0].transpose(1, 2), ctx[:, :, 1].transpose(1, 2)  # [S, Hkv, W, D]
        # Grouped heads as queries: query head h reads KV head h // group (as SDPA's
        # enable_gqa), so each KV head's group of query heads is its query rows. No K/V
        # is repeated per group, and CUDA's memory-efficient kernel (which takes the
        # mask but not grouped heads) runs instead of the math one.
        group = a.num_heads // a.num_kv_heads
        out = F.scaled_dot_product_attention(
            q.view(s, a.num_kv_heads, group, q.shape[-1]),  # [S, Hkv, group, D]
            k,
            v,
            attn_mask=meta.decode_mask,  # [S, 1, 1, W]
            scale=a.scale,
        )
        return out.reshape(q.shape)


def run_static_decode(
    body: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    buffers: DecodeBuffers,
    layers: Sequence[StaticDecodeAttention],
    size: int,
    writes: bool = True,
) -> torch.Tensor:
    """The decode step of ``size`` rows over the buffers: ``body`` is the model's step
    function (``(input_ids [S], positions [S]) -> hidden [S, H]``, compiled or eager).
    Returns hidden ``[S, H]``; rows past the step's sequences are padding."""
    meta = buffers.decode_meta(size, writes)
    ids, positions = buffers.device["input_ids"][:size], buffers.device["positions"][:size]
    with step_context(meta, layers, size):
        return body(ids, positions)
