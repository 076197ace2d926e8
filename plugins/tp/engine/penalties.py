"""OpenAI's presence and frequency penalties, ``logit_bias`` and vLLM's repetition penalty,
applied to a batch's logits.

For each row, before temperature, top-k and top-p (OpenAI's formula)::

    logit[j] += logit_bias[j] - frequency_penalty * c[j] - presence_penalty * (c[j] > 0)

where ``c[j]`` counts token ``j`` among the tokens the sequence generated so far (not
its prompt, as OpenAI and vLLM). As in vLLM, ``logit_bias`` comes first, then
``repetition_penalty`` (over the prompt's and the output's tokens), then these. The driver sends those tokens and the bias with each
step that needs them (``SamplerExtras``): a row's arithmetic depends on its own tokens
only, so a preempted and recomputed sequence samples as it would have. Rows without
either are untouched, and a batch with neither keeps its logits (no copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rt.core.step import SamplingParams
from rt.plugins.tp.engine.sequence import SamplerExtras


def adjust_logits(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    extras: Sequence[SamplerExtras | None],
) -> torch.Tensor:
    """``logits`` ([n, V]) with each row's bias and penalties applied: a new tensor
    when any row has them, else ``logits`` itself. ``extras[i]``: row ``i``'s generated
    tokens and ``logit_bias`` (None: it has neither)."""
    rows = [i for i, e in enumerate(extras) if e is not None]
    if not rows:
        return logits
    out = logits.clone()
    vocab, device = logits.shape[1], logits.device
    for i in rows:
        p, e = params[i], extras[i]
        if e.logit_bias:  # token ids below the vocabulary size: the engine checks at submit
            ids = torch.tensor([t for t, _ in e.logit_bias], device=device)
            bias = torch.tensor([b for _, b in e.logit_bias], dtype=out.dtype, device=device)
            out[i].index_add_(0, ids, bias)
        banned = [t for t in e.banned if t < vocab]  # a stop token id may lie past it
        if banned:  # before min_tokens: whatever would end the sequence
            out[i, torch.tensor(banned, dtype=torch.long, device=device)] = float("-inf")
        if p.repetition_penalty != 1.0:
            _repetition(out[i], e, p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and e.outputs:
            counts = torch.bincount(torch.tensor(e.outputs, device=device), minlength=vocab)
            counts = counts[:vocab].to(out.dtype)  # [V]
            out[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return out


def _repetition(row: torch.Tensor, extras: SamplerExtras, penalty: float) -> None:
    """vLLM's and Hugging Face's rule, in place on one row of logits ([V]): a token of
    the prompt or the output has its logit divided by ``penalty`` when positive and
    multiplied by it when not (so ``penalty`` > 1 makes it less likely either way)."""
    seen = torch.tensor(extras.prompt + extras.outputs, dtype=torch.long, device=row.device)
    values = row[seen]
    row[seen] = torch.where(values > 0, values / penalty, values * penalty)
