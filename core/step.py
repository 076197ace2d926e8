"""The step metadata schema: what the driver tells every TP rank to run in one engine step.

These records are what a metadata-broadcast channel carries. They are plain attrs
records of ints and floats (no torch), so a channel may pickle them or pack them
into a fixed binary layout. ``STEP_SCHEMA_VERSION`` changes whenever a field does;
ranks compare it during the channel's startup round trip.
"""

from __future__ import annotations

import attrs

STEP_SCHEMA_VERSION = 1


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class SamplingParams:
    """How to pick the next token of one sequence.

    ``temperature == 0`` means greedy. ``top_k == 0`` means no top-k cut.
    ``seed`` makes sampling reproducible per request: the n-th output token of a
    request is drawn from a generator seeded with ``(seed, n)``, so preemption and
    recomputation do not change the result. ``logprobs`` is how many top
    alternatives to report per token (0: only the chosen token's logprob is kept
    when ``want_logprobs`` is set).
    """

    temperature: float = attrs.field(default=1.0, validator=_non_negative)
    top_p: float = attrs.field(default=1.0)
    top_k: int = attrs.field(default=0, validator=_non_negative)
    seed: int | None = None
    max_tokens: int = attrs.field(default=16, validator=_non_negative)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    want_logprobs: bool = False
    logprobs: int = attrs.field(default=0, validator=_non_negative)

    @top_p.validator
    def _check_top_p(self, attribute: attrs.Attribute, value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {value!r}")

    @logprobs.validator
    def _check_logprobs(self, attribute: attrs.Attribute, value: int) -> None:
        if value > 20:
            raise ValueError(f"logprobs must be at most 20, got {value!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@attrs.frozen
class SeqStep:
    """One sequence's share of a step.

    ``token_ids`` are the tokens to run through the model now; the first of them
    sits at position ``start_pos``, which is also how many of the sequence's tokens
    are already in the KV cache. ``block_table`` lists the KV-cache blocks of the
    whole sequence, in order, covering at least ``start_pos + len(token_ids)``
    tokens. ``sample`` says whether the last position's logits are wanted (false for
    a prefill chunk that does not finish the prompt).
    """

    seq_id: int
    token_ids: tuple[int, ...]
    start_pos: int
    block_table: tuple[int, ...]
    sample: bool = True
    num_generated: int = 0
    sampling: SamplingParams = SamplingParams()


@attrs.frozen
class StepMetadata:
    """Everything every rank needs to run one forward pass of the batch."""

    step_id: int
    seqs: tuple[SeqStep, ...]
    version: int = STEP_SCHEMA_VERSION

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.seqs)
