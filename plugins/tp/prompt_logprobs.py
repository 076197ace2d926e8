"""Logprobs of a prompt's tokens: the logits of every prompt position, reduced on rank 0.

A request that asks for them (``SamplingParams.prompt_logprobs``, what a completions
``echo`` with ``logprobs`` needs) has each prefill row of its prompt projected to the
vocabulary, not only the last one. The LM head is vocabulary-parallel, so every rank
takes part in each projection (an all-gather); the rows go through in slices of
``SLICE_ROWS``, so a 2k-token prompt never holds a [2k, V] float32 tensor (400 MB for
SmolLM2's 49k vocabulary) and each slice's gather fits a shared-memory slot. Rank 0
turns each slice into the logprob of the token that follows each row and its top
alternatives; the other ranks drop theirs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from rt.core.step import StepMetadata
from rt.plugins.tp.engine.sequence import PromptLogprobs, TokenLogprobs

SLICE_ROWS = 32  # [32, V/tp] float32 per rank: 2 MB for SmolLM2 at TP=3


Spans = list[tuple[int, int, int]]  # StepMetadata.prompt_rows(): (seq index, first, count)


def prompt_rows(step: StepMetadata, hidden: torch.Tensor) -> tuple[Spans, torch.Tensor] | None:
    """The step's scored spans and the rows of ``hidden`` ([T, H]) they cover, in span
    order, or None when no sequence asks."""
    spans = step.prompt_rows()
    if not spans:
        return None
    index = torch.cat([torch.arange(first, first + n) for _, first, n in spans])
    return spans, hidden[index.to(hidden.device)]


def compute(
    model: torch.nn.Module,
    step: StepMetadata,
    spans: Spans,
    rows: torch.Tensor,
    next_tokens: Mapping[int, int] | None,
) -> PromptLogprobs | None:
    """Project ``rows`` (from :func:`prompt_rows`, with its ``spans``) to logits, a slice
    at a time, on every rank alike. ``next_tokens`` (rank 0 only; None elsewhere) maps a sequence id to
    the prompt token after its chunk, for a chunk that does not end the prompt.
    Rank 0 returns, per sequence id, the position of the first token scored and one
    :class:`TokenLogprobs` per row; the other ranks return None."""
    targets = _targets(step, spans, next_tokens) if next_tokens is not None else None
    tops = [step.sampling[step.sampling_index[i]].prompt_logprobs or 0 for i, _, _ in spans]
    k = max(tops, default=0)
    chosen: list[float] = []
    top_vals: list[list[float]] = []
    top_ids: list[list[int]] = []
    for start in range(0, rows.shape[0], SLICE_ROWS):
        logits = model.compute_logits(rows[start : start + SLICE_ROWS]).float()  # [r, V]
        if targets is None:
            continue
        lp = torch.log_softmax(logits, dim=-1)  # [r, V]
        want = targets[start : start + SLICE_ROWS].to(lp.device).unsqueeze(1)  # [r, 1]
        chosen += lp.gather(1, want).squeeze(1).tolist()
        if k:
            vals, ids = lp.topk(min(k, lp.shape[1]), dim=-1)  # [r, k], high to low
            top_vals += vals.tolist()
            top_ids += ids.tolist()
    if targets is None:
        return None
    out: PromptLogprobs = {}
    row = 0
    for (i, _, n), top in zip(spans, tops, strict=True):
        values = []
        for j in range(row, row + n):
            pairs = tuple(zip(top_ids[j][:top], top_vals[j][:top], strict=True)) if k else ()
            values.append(TokenLogprobs(int(targets[j]), chosen[j], pairs))
        out[step.seq_ids[i]] = (step.start_positions[i] + 1, values)
        row += n
    return out


def _targets(step: StepMetadata, spans: Spans, next_tokens: Mapping[int, int]) -> torch.Tensor:
    """The token each prompt row predicts: the next one in the sequence's chunk, or for
    the last row of a chunk that does not end the prompt, the prompt token after the
    chunk (``next_tokens``)."""
    ids = torch.frombuffer(step.token_ids, dtype=torch.int32).long()  # [T]
    parts = []
    for i, first, n in spans:
        part = ids[first + 1 : first + step.token_counts[i]]  # within the chunk
        if part.numel() < n:
            seq_id = step.seq_ids[i]
            if seq_id not in next_tokens:
                raise ValueError(
                    f"step {step.step_id}: seq {seq_id}'s prompt chunk ends before its "
                    "prompt but the driver sent no next prompt token"
                )
            part = torch.cat([part, torch.tensor([next_tokens[seq_id]], dtype=torch.long)])
        parts.append(part)
    return torch.cat(parts)
