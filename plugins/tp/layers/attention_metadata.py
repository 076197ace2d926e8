"""What every attention layer needs for one step, built once per step from its metadata.

A token at position ``pos`` of a sequence lives in cache slot
``block_table[pos // block_size] * block_size + pos % block_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from rt.core.step import SeqStep


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


def build_attention_metadata(
    seqs: Sequence[SeqStep], block_size: int, device: torch.device
) -> AttentionMetadata:
    # block_tables: [B, max_blocks], padded with block 0 (never read: masked or out of range)
    max_blocks = max(len(s.block_table) for s in seqs)
    for s in seqs:
        assert len(s.block_table) * block_size >= s.start_pos + len(s.token_ids), (
            f"seq {s.seq_id}: block table {s.block_table} too short for "
            f"{s.start_pos + len(s.token_ids)} tokens"
        )
    block_tables = torch.tensor(
        [list(s.block_table) + [0] * (max_blocks - len(s.block_table)) for s in seqs]
    )
    lens = [len(s.token_ids) for s in seqs]
    seq_of_token = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(lens))
    positions = torch.cat(
        [torch.arange(s.start_pos, s.start_pos + n) for s, n in zip(seqs, lens, strict=True)]
    )
    slot_mapping = block_tables[seq_of_token, positions // block_size] * block_size
    slot_mapping += positions % block_size

    decode = [i for i, n in enumerate(lens) if n == 1]
    decode_token_idx = decode_slots = decode_mask = None
    if decode:
        offsets = torch.tensor([0, *lens]).cumsum(0)
        decode_token_idx = offsets[decode]
        ctx_lens = torch.tensor([seqs[i].start_pos + 1 for i in decode])
        pos = torch.arange(int(ctx_lens.max()))
        in_ctx = pos.unsqueeze(0) < ctx_lens.unsqueeze(1)  # [Bd, Lmax]
        blocks = block_tables[decode].gather(1, (pos // block_size).expand(len(decode), -1))
        slots = blocks * block_size + pos % block_size
        decode_slots = torch.where(in_ctx, slots, 0).to(device)
        decode_mask = in_ctx[:, None, None, :].to(device)
        decode_token_idx = decode_token_idx.to(device)

    prefills, token_start = [], 0
    for i, (s, n) in enumerate(zip(seqs, lens, strict=True)):
        if n > 1:
            prefills.append(_prefill(s, n, token_start, block_tables[i], block_size, device))
        token_start += n
    return AttentionMetadata(
        positions=positions.to(device),
        slot_mapping=slot_mapping.to(device),
        decode_token_idx=decode_token_idx,
        decode_slots=decode_slots,
        decode_mask=decode_mask,
        prefills=tuple(prefills),
    )


def _prefill(
    s: SeqStep, n: int, token_start: int, block_table: torch.Tensor, block_size: int, device
) -> PrefillSeq:
    if s.start_pos == 0:
        return PrefillSeq(token_start, n, None, None)
    ctx_len = s.start_pos + n
    pos = torch.arange(ctx_len)
    context = block_table[pos // block_size] * block_size + pos % block_size
    mask = torch.arange(ctx_len).unsqueeze(0) <= (s.start_pos + torch.arange(n)).unsqueeze(1)
    return PrefillSeq(token_start, n, context.to(device), mask.to(device))
