"""What every attention layer needs for one step, built once per step from its metadata.

A token at position ``pos`` of a sequence lives in cache slot
``block_table[pos // block_size] * block_size + pos % block_size``. Everything is
computed with tensor ops over the step's columnar arrays (no per-sequence Python
work), except one small record per sequence that prefills several tokens.
"""

from __future__ import annotations

from array import array

import attrs
import torch
from rt.core.step import StepMetadata


@attrs.frozen
class PrefillSeq:
    token_start: int  # index of its first new token in the step's flat token list
    num_tokens: int
    # context_slots: [L] cache slots of positions [0, L); None when start_pos == 0
    context_slots: torch.Tensor | None
    # mask: [n, L] bool, True where query i may see key j (j <= start_pos + i)
    mask: torch.Tensor | None


@attrs.frozen
class AttentionMetadata:
    """What every attention layer needs for one step; built once, shared by all layers."""

    positions: torch.Tensor  # [T] long: each new token's position in its sequence
    slot_mapping: torch.Tensor  # [T] long: where each new token's K/V goes
    decode_token_idx: torch.Tensor | None  # [Bd] long: the decoding seqs' tokens in T
    decode_slots: torch.Tensor | None  # [Bd, Lmax] long: context slots, 0 past the end
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Lmax] bool: key within context
    prefills: tuple[PrefillSeq, ...]


def as_long(values: array) -> torch.Tensor:
    """An int array of the step as a long tensor (``frombuffer`` rejects empty buffers)."""
    if not values:
        return torch.zeros(0, dtype=torch.long)
    dtype = torch.int64 if values.itemsize == 8 else torch.int32
    return torch.frombuffer(values, dtype=dtype).long()


def block_tables(step: StepMetadata) -> torch.Tensor:
    """``[B, max_blocks]`` long: each sequence's block table, padded with block 0
    (never read: masked out or past the context)."""
    lens = as_long(step.table_lens)  # [B]
    flat = as_long(step.block_ids)  # [sum(lens)]
    width = int(lens.max())
    if width == 0:
        return torch.zeros(len(lens), 0, dtype=torch.long)
    col = torch.arange(width)
    valid = col.unsqueeze(0) < lens.unsqueeze(1)  # [B, W]
    index = (lens.cumsum(0) - lens).unsqueeze(1) + col  # [B, W] into flat
    return torch.where(valid, flat[index.clamp(max=max(len(flat) - 1, 0))], 0)


def build_attention_metadata(
    step: StepMetadata, block_size: int, device: torch.device
) -> AttentionMetadata:
    counts = as_long(step.token_counts)  # [B] new tokens per sequence
    starts = as_long(step.start_positions)  # [B]
    tables = block_tables(step)  # [B, W]
    short = as_long(step.table_lens) * block_size < starts + counts
    assert not bool(short.any()), (
        f"seq {step.seq_ids[int(short.nonzero()[0])]}: block table too short for its tokens"
    )
    num_seqs, num_tokens = len(counts), step.num_tokens
    first_token = counts.cumsum(0) - counts  # [B] index of each seq's first token in T
    seq_of_token = torch.repeat_interleave(torch.arange(num_seqs), counts)  # [T]
    positions = starts[seq_of_token] + torch.arange(num_tokens) - first_token[seq_of_token]
    slot_mapping = tables[seq_of_token, positions // block_size] * block_size
    slot_mapping += positions % block_size

    decode = (counts == 1).nonzero().squeeze(1)  # [Bd]
    decode_token_idx = decode_slots = decode_mask = None
    if len(decode):
        ctx_lens = starts[decode] + 1  # [Bd]
        pos = torch.arange(int(ctx_lens.max()))
        in_ctx = pos.unsqueeze(0) < ctx_lens.unsqueeze(1)  # [Bd, Lmax]
        blocks = tables[decode].gather(1, (pos // block_size).expand(len(decode), -1))
        slots = blocks * block_size + pos % block_size
        decode_slots = torch.where(in_ctx, slots, 0).to(device)
        decode_mask = in_ctx[:, None, None, :].to(device)
        decode_token_idx = first_token[decode].to(device)

    prefills = tuple(
        _prefill(
            int(first_token[i]),
            step.token_counts[i],
            step.start_positions[i],
            tables[i],
            block_size,
            device,
        )  # fmt: skip
        for i in (counts > 1).nonzero().squeeze(1).tolist()
    )
    return AttentionMetadata(
        positions=positions.to(device),
        slot_mapping=slot_mapping.to(device),
        decode_token_idx=decode_token_idx,
        decode_slots=decode_slots,
        decode_mask=decode_mask,
        prefills=prefills,
    )


def _prefill(
    token_start: int, n: int, start_pos: int, table: torch.Tensor, block_size: int, device
) -> PrefillSeq:
    if start_pos == 0:
        return PrefillSeq(token_start, n, None, None)
    ctx_len = start_pos + n
    pos = torch.arange(ctx_len)
    context = table[pos // block_size] * block_size + pos % block_size
    mask = torch.arange(ctx_len).unsqueeze(0) <= (start_pos + torch.arange(n)).unsqueeze(1)
    return PrefillSeq(token_start, n, context.to(device), mask.to(device))
