"""A request as the scheduler sees it: token ids, KV blocks and status (no torch).

A ``Sequence`` is mutable and lives on the driver only; what crosses to the ranks
each step is a frozen ``rt.core.step.SeqStep`` built from it.
"""

from __future__ import annotations

import enum
from typing import Literal

import attrs
from rt.core.step import SamplingParams

FinishReason = Literal["stop", "length", "abort"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@attrs.frozen
class TokenLogprobs:
    """The log-probability of one chosen token and the top alternatives at its position.

    Values come from the log-softmax of the raw logits (before temperature, top-k and
    top-p), which is what the OpenAI API reports. ``top`` is sorted by logprob,
    highest first, and holds ``SamplingParams.logprobs`` entries (at most 20).
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


# What a step's prompt logprobs give the driver: by sequence id, the position of the
# first prompt token scored and one TokenLogprobs per token from there on.
PromptLogprobs = dict[int, tuple[int, list[TokenLogprobs]]]


@attrs.frozen
class SamplerExtras:
    """What rank 0's sampler needs for one sequence beyond its step's sampling record,
    sent beside the step (never to the other ranks): the tokens it generated so far
    (for penalties; empty without them), its ``logit_bias``, its prompt's distinct
    tokens (with a ``repetition_penalty``), and the tokens that would end it before
    ``min_tokens``; and for a prompt chunk whose logprobs are wanted and that does not
    end the prompt, the prompt token after it (-1: none), the last row's target."""

    outputs: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    prompt: tuple[int, ...] = ()  # its distinct prompt tokens, for a repetition_penalty
    banned: tuple[int, ...] = ()  # tokens it may not sample yet (min_tokens)
    next_prompt_token: int = -1


@attrs.define(eq=False)
class Sequence:
    """One request: its prompt, what it has generated, and where its KV lives.

    ``num_cached_tokens`` counts the leading tokens of ``all_token_ids`` whose KV is
    in the cache; the tokens after it are what the next step computes (the whole
    prompt on admission, one token while decoding, everything again after a
    preemption). ``arrival`` orders requests: lower arrived first.

    Example::

        seq = Sequence(7, [1, 2, 3], SamplingParams(max_tokens=4))
        seq.num_tokens          # 3
        seq.num_blocks(2)       # 2
    """

    seq_id: int
    prompt_token_ids: list[int] = attrs.field(converter=list)
    sampling: SamplingParams = attrs.field(factory=SamplingParams)
    arrival: int = 0
    output_token_ids: list[int] = attrs.field(factory=list)
    output_logprobs: list[TokenLogprobs | None] = attrs.field(factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = attrs.field(factory=list)
    num_cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    # one per prompt token once a request that asks for them has its prefill done:
    # None for the first, then each token's logprob given the ones before it
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # what the steps carry (SamplingParams.step_view), made once
    step_sampling: SamplingParams = attrs.field(init=False)
    _prompt_distinct: tuple[int, ...] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.step_sampling = self.sampling.step_view()
        if self.sampling.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def has_sampler_extras(self) -> bool:
        p = self.sampling
        return (
            bool(p.logit_bias) or p.penalized or p.min_tokens > 0 or p.prompt_logprobs is not None
        )

    def set_prompt_logprobs(self, first: int, values: list[TokenLogprobs]) -> None:
        """Keep the logprobs of prompt tokens ``first ..`` (a recomputed chunk's again:
        the same values)."""
        assert self.prompt_logprobs is not None, "the request asked for no prompt logprobs"
        self.prompt_logprobs[first : first + len(values)] = values

    def chunk_extras(self, end: int) -> SamplerExtras | None:
        """For a prompt chunk ending before position ``end`` that does not end the prompt
        and whose logprobs are wanted: the prompt token at ``end``, which the chunk's
        last row predicts."""
        if self.prompt_logprobs is None or self.num_generated or end >= self.num_prompt_tokens:
            return None
        return SamplerExtras(next_prompt_token=self.prompt_token_ids[end])

    def sampler_extras(self, eos_token_ids: frozenset[int] = frozenset()) -> SamplerExtras | None:
        """What rank 0's sampler needs for this sequence's next token, or None when
        nothing (no bias or penalty, and ``min_tokens`` reached)."""
        p = self.sampling
        if not p.logit_bias and not p.penalized and self.num_generated >= p.min_tokens:
            return None
        outputs = tuple(self.output_token_ids) if p.penalized else ()
        banned: tuple[int, ...] = ()
        if self.num_generated < p.min_tokens:
            eos = () if p.ignore_eos else tuple(eos_token_ids)
            banned = eos + p.stop_token_ids
        prompt = ()
        if p.repetition_penalty != 1.0:
            if self._prompt_distinct is None:  # made once: the prompt never changes
                self._prompt_distinct = tuple(sorted(set(self.prompt_token_ids)))
            prompt = self._prompt_distinct
        return SamplerExtras(outputs, p.logit_bias, prompt, banned)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens whose KV is not in the cache yet (1 while decoding)."""
        return self.num_tokens - self.num_cached_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def num_blocks(self, block_size: int) -> int:
        """KV blocks needed to hold all of this sequence's tokens."""
        return -(-self.num_tokens // block_size)

    def uncomputed_token_ids(self, limit: int | None = None) -> list[int]:
        """The next tokens to run through the model, at most ``limit`` of them."""
        start = self.num_cached_tokens
        end = self.num_tokens if limit is None else min(self.num_tokens, start + limit)
        prompt_len = len(self.prompt_token_ids)
        if start >= prompt_len:  # decoding: avoid copying the prompt every step
            return self.output_token_ids[start - prompt_len : end - prompt_len]
        return self.all_token_ids[start:end]
