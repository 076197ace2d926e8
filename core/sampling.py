"""How to pick the next token of one sequence: the request's sampling parameters.

Steps carry them to the ranks (``rt.core.step``), so nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


MAX_PENALTY = 2.0  # OpenAI's range for presence_penalty and frequency_penalty: [-2, 2]
MAX_LOGIT_BIAS = 100.0  # and for a logit_bias value: [-100, 100]
# repetition_penalty in [0.01, 2] (1: none): dividing by less would turn a logit of a
# few hundred into infinity, and a softmax over infinities is NaN
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 2.0


def _penalty(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not -MAX_PENALTY <= value <= MAX_PENALTY:
        raise ValueError(f"{attribute.name} must be in [-2, 2], got {value!r}")


def _bias_pairs(value: Iterable[tuple[int, float]]) -> tuple[tuple[int, float], ...]:
    return tuple((int(t), float(b)) for t, b in value)


def _check_logit_bias(
    instance: object, attribute: attrs.Attribute, value: tuple[tuple[int, float], ...]
) -> None:
    ids = [t for t, _ in value]
    if len(set(ids)) != len(ids):
        raise ValueError("logit_bias names a token id twice")
    for token_id, bias in value:
        if token_id < 0 or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise ValueError(
                f"logit_bias needs token ids >= 0 and biases in [-100, 100], got "
                f"{token_id}: {bias!r}"
            )


GREEDY_BELOW = 1e-5  # as vLLM: a temperature this small samples the argmax anyway


@attrs.frozen
class SamplingParams:
    """How to pick the next token of one sequence.

    ``temperature`` below ``GREEDY_BELOW`` (0 included) means greedy: dividing logits
    by a smaller one overflows float32. ``top_k == 0`` means no top-k cut.
    ``seed`` makes sampling reproducible per request: the n-th output token of a
    request is drawn from a generator seeded with ``(seed, n)``, so preemption and
    recomputation do not change the result. ``logprobs`` is how many top
    alternatives to report per token (0: only the chosen token's logprob is kept
    when ``want_logprobs`` is set).

    ``presence_penalty`` and ``frequency_penalty`` (each in [-2, 2]) lower the logit
    of every token the sequence has generated so far, by the first once and by the
    second per occurrence (OpenAI's formula; the prompt does not count).
    ``repetition_penalty`` (in [0.01, 2]; 1: none) divides the positive logits of every
    token in the prompt or the output by itself and multiplies the negative ones (as
    vLLM and Hugging Face do). ``logit_bias`` adds ``bias`` (in [-100, 100]) to token
    ``token_id``'s logit, per ``(token_id, bias)`` pair. ``min_p`` (in [0, 1]) keeps
    only the tokens at least ``min_p`` times as likely as the most likely one, after
    temperature. None of these changes the reported logprobs. Until ``min_tokens``
    tokens are out, EOS (unless ``ignore_eos``) and ``stop_token_ids`` cannot be
    sampled (vLLM's rule; stop strings still apply).

    ``prompt_logprobs`` (None: not wanted) asks for the logprob of every prompt token
    after the first, given the tokens before it, and this many top alternatives at
    each position: the ranks compute logits for every prompt position of the request
    (``StepMetadata.prompt_rows``), which costs a vocabulary projection per token.
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
    presence_penalty: float = attrs.field(default=0.0, validator=_penalty)
    frequency_penalty: float = attrs.field(default=0.0, validator=_penalty)
    logit_bias: tuple[tuple[int, float], ...] = attrs.field(
        default=(), converter=_bias_pairs, validator=_check_logit_bias
    )
    repetition_penalty: float = attrs.field(default=1.0)
    min_p: float = attrs.field(default=0.0)
    min_tokens: int = attrs.field(default=0, validator=_non_negative)
    prompt_logprobs: int | None = attrs.field(default=None)

    @prompt_logprobs.validator
    def _check_prompt_logprobs(self, attribute: attrs.Attribute, value: int | None) -> None:
        if value is not None and not 0 <= value <= 20:
            raise ValueError(f"prompt_logprobs must be None or in [0, 20], got {value!r}")

    @repetition_penalty.validator
    def _check_repetition_penalty(self, attribute: attrs.Attribute, value: float) -> None:
        if not MIN_REPETITION_PENALTY <= value <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be in [0.01, 2], got {value!r}")

    @min_p.validator
    def _check_min_p(self, attribute: attrs.Attribute, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {value!r}")

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
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        """Whether sampling needs the tokens this sequence generated so far."""
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    def step_view(self) -> SamplingParams:
        """These params as a step carries them to every rank: without the stop strings
        and stop token ids (the driver checks them) and ``logit_bias`` (rank 0's sampler
        gets it beside the step), whose size the client chooses: what every step sends
        stays small."""
        if not self.stop and not self.stop_token_ids and not self.logit_bias:
            return self
        return attrs.evolve(self, stop=(), stop_token_ids=(), logit_bias=())
