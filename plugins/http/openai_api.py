"""OpenAI requests, from a validated body (``bodies.py``) to what the engine runs.

What a body's declaration cannot say (a rule across two fields, the context length)
is code here, next to the OpenAI API reference's wording; the response shapes are in
``responses.py``. No Starlette here.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from rt.core.sampling import SamplingParams
from rt.plugins.http.bodies import (
    MAX_BATCH_CHOICES,
    MIN_TEMPERATURE,
    ChatBody,
    CommonBody,
    CompletionBody,
    Message,
    TextPart,
)
from rt.plugins.http.errors import ApiError
from rt.plugins.http.fields import load as _load

Kind = Literal["completion", "chat"]
DEFAULT_COMPLETION_MAX_TOKENS = 16  # what OpenAI's legacy completions endpoint uses


@attrs.frozen
class ParsedRequest:
    """A validated request, before tokenization."""

    kind: Kind
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    sampling: SamplingParams  # max_tokens filled in once the prompt length is known
    # completions: each prompt's text or token ids (a batch holds several); chat: messages
    prompts: tuple[str | tuple[int, ...], ...] = ()
    messages: tuple[dict, ...] = ()
    logprobs: int | None = None  # None: not asked for; else how many alternatives
    max_tokens_param: str = "max_tokens"  # the field that set max_tokens, for errors
    n: int = 1  # choices per prompt
    echo: bool = False  # the prompt goes before each choice's text (completions)
    echo_only: bool = False  # echo with max_tokens 0: one token is made and not shown

    @property
    def num_choices(self) -> int:
        """Sequences the engine runs for this request: n per prompt."""
        return self.n * max(len(self.prompts), 1)


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index``'s params: a seeded request's choices take seeds ``seed + index``
    (wrapped to int64), so they differ from each other and are reproducible."""
    if index == 0 or sampling.seed is None:
        return sampling
    seed = (sampling.seed + index + 2**63) % 2**64 - 2**63
    return attrs.evolve(sampling, seed=seed)


def _parsed(body: CommonBody, kind: Kind, logprobs: int | None, **rest: Any) -> ParsedRequest:
    temperature = body.temperature if body.temperature >= MIN_TEMPERATURE else 0.0
    sampling = SamplingParams(
        temperature=temperature,
        top_p=body.top_p,
        seed=body.seed,
        max_tokens=1,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
        want_logprobs=logprobs is not None,
        logprobs=logprobs or 0,
        top_k=max(body.top_k, 0),
        ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        stop_token_ids=tuple(body.stop_token_ids or ()),
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=body.logit_bias or (),
    )
    options = body.stream_options
    return ParsedRequest(
        kind=kind,
        model=body.model,
        stream=body.stream,
        include_usage=options is not None and options.include_usage,
        max_tokens=body.max_tokens,
        sampling=sampling,
        logprobs=logprobs,
        n=body.n,
        **rest,
    )


def parse_completion(data: dict) -> ParsedRequest:
    body: CompletionBody = _load(CompletionBody, data)
    echo_only = body.echo and body.max_tokens == 0
    if body.max_tokens == 0 and not body.echo:
        raise ApiError(
            422, "max_tokens must be at least 1 (0 only with echo: true)", param="max_tokens"
        )
    if echo_only:  # the engine makes one token, which the response leaves out
        body = attrs.evolve(body, max_tokens=1)
    prompt = body.prompt
    batch = isinstance(prompt, list) and isinstance(prompt[0], str | list)
    prompts = tuple(p if isinstance(p, str) else tuple(p) for p in (prompt if batch else [prompt]))
    if len(prompts) * body.n > MAX_BATCH_CHOICES:
        raise ApiError(
            422,
            f"{len(prompts)} prompts x n={body.n} make {len(prompts) * body.n} choices; "
            f"at most {MAX_BATCH_CHOICES} per request",
            param="n",
        )
    rest: dict[str, Any] = {"echo": body.echo, "echo_only": echo_only, "prompts": prompts}
    parsed = _parsed(body, "completion", body.logprobs, **rest)
    if body.echo and body.logprobs is not None:
        sampling = attrs.evolve(parsed.sampling, prompt_logprobs=body.logprobs)
        parsed = attrs.evolve(parsed, sampling=sampling)
    return parsed


def _text(content: str | list[TextPart] | None) -> str:
    if isinstance(content, list):
        return "".join(part.text for part in content)
    return content or ""


def message_dicts(messages: list[Message]) -> list[dict]:
    """Messages as a chat template takes them: role and text."""
    return [{"role": m.role, "content": _text(m.content)} for m in messages]


def parse_chat(data: dict) -> ParsedRequest:
    body: ChatBody = _load(ChatBody, data)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(422, "top_logprobs needs logprobs: true", param="top_logprobs")
    messages = tuple(message_dicts(body.messages))
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    if body.max_completion_tokens is not None:
        body = attrs.evolve(body, max_tokens=body.max_completion_tokens)
        return _parsed(
            body, "chat", logprobs, messages=messages, max_tokens_param="max_completion_tokens"
        )
    return _parsed(body, "chat", logprobs, messages=messages)


def resolve_max_tokens(parsed: ParsedRequest, prompt_len: int, max_model_len: int) -> int:
    """How many tokens to generate. Left out, chat takes the rest of the context and
    completions 16 (as OpenAI does), capped to the rest; asked for, it must fit, or
    the error says so in OpenAI's words."""
    room = max_model_len - prompt_len
    what = "messages" if parsed.kind == "chat" else "prompt"
    if prompt_len == 0:
        raise ApiError(422, f"the {what} is empty (0 tokens); send at least one token", param=what)
    if room < 1:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"{what} resulted in {prompt_len} tokens, which leaves no room for the completion. "
            f"Please reduce the length of the {what}.",
            param=what,
            code="context_length_exceeded",
        )
    wanted = parsed.max_tokens
    if wanted is None:
        return room if parsed.kind == "chat" else min(DEFAULT_COMPLETION_MAX_TOKENS, room)
    if wanted > room:
        raise ApiError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + wanted} tokens ({prompt_len} in the {what}, {wanted} in "
            f"the completion). Please reduce the length of the {what} or completion.",
            param=parsed.max_tokens_param,
            code="context_length_exceeded",
        )
    return wanted
