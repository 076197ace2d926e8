"""Submitting a request's choices to the engine, and ending them however the response ends.

A completions request may hold a batch of prompts, each with ``n`` choices: choice
``i`` is prompt ``i // n``'s choice ``i % n``, a sequence of its own in the engine's
batch. Everything that can refuse the request (tokenizing, the context length, the
engine's own checks) runs before the response starts, so a refusal is a real 4xx,
and a refusal of any choice withdraws the ones already submitted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import attrs
from rt.core.engine import GenerationOutput, GenerationRequest
from rt.core.errors import EngineDead, RequestError
from rt.core.sampling import SamplingParams
from rt.plugins.http import openai_api as oa
from rt.plugins.http import responses as rs
from rt.plugins.http.errors import ApiError
from rt.plugins.http.state import RequestStream, ServerState

log = logging.getLogger("rt.http")


@attrs.frozen
class Submitted:
    """A request in the engine: ``streams[i]`` is choice ``i``'s."""

    response_id: str
    streams: list[RequestStream]
    n: int  # choices per prompt
    echo: tuple[str, ...] | None  # each prompt's text, when the response echoes it


def _tokenize(engine: Any, parsed: oa.ParsedRequest) -> list[list[int]]:
    if parsed.kind == "chat":
        text = engine.apply_chat_template(list(parsed.messages))
        return [engine.encode(text, False)]
    return [engine.encode(p) if isinstance(p, str) else list(p) for p in parsed.prompts]


async def _prompt_ids(engine: Any, parsed: oa.ParsedRequest) -> list[list[int]]:
    """Each prompt's token ids. Tokenizing a long prompt takes milliseconds: off the
    event loop."""
    try:
        return await asyncio.to_thread(_tokenize, engine, parsed)
    except Exception as e:  # a template that rejects the messages, say
        log.info("could not build the prompt", exc_info=True)
        raise ApiError(422, f"could not build the prompt: {type(e).__name__}: {e}") from None


async def _echo_texts(
    engine: Any, parsed: oa.ParsedRequest, ids: list[list[int]]
) -> tuple[str, ...] | None:
    """Each prompt as an echo shows it: the text sent, or its token ids' text."""
    if not parsed.echo:
        return None

    def texts() -> tuple[str, ...]:
        return tuple(
            p if isinstance(p, str) else engine.decode(i)
            for p, i in zip(parsed.prompts, ids, strict=True)
        )

    try:
        return await asyncio.to_thread(texts)
    except RequestError as e:  # a token id past the vocabulary
        raise ApiError(422, str(e), param="prompt") from None


def _sampling(parsed: oa.ParsedRequest, prompt_len: int, max_model_len: int) -> SamplingParams:
    """The params of one prompt's choices, max_tokens resolved for its length."""
    max_tokens = oa.resolve_max_tokens(parsed, prompt_len, max_model_len)
    try:
        sampling = attrs.evolve(parsed.sampling, max_tokens=max_tokens)
    except (TypeError, ValueError) as e:
        raise ApiError(422, str(e)) from None
    if sampling.min_tokens > max_tokens:
        raise ApiError(
            422,
            f"min_tokens ({sampling.min_tokens}) is more than the {max_tokens} tokens this "
            "request may generate",
            param="min_tokens",
        )
    return sampling


async def submit(state: ServerState, parsed: oa.ParsedRequest, scope: dict[str, Any]) -> Submitted:
    """Submit every choice of every prompt. The request counts against the server's
    limit until the engine is done with all of them."""
    engine = state.engine()
    state.check_model(engine, parsed.model)
    prompts = await _prompt_ids(engine, parsed)
    params = [_sampling(parsed, len(ids), engine.max_model_len) for ids in prompts]
    echo = await _echo_texts(engine, parsed, prompts)
    response_id = rs.new_id(parsed.kind)
    n, total = parsed.n, len(prompts) * parsed.n
    left = [total]

    def engine_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            state.release(scope)

    streams: list[RequestStream] = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(total):
            ids, sampling = prompts[i // n], params[i // n]
            rid = response_id if total == 1 else f"{response_id}-{i}"
            ttft = state.metrics.ttft.observe if i == 0 else None
            stream = RequestStream(engine, rid, loop, ttft, on_engine_done=engine_done)
            choice = oa.choice_sampling(sampling, i % n)
            request = GenerationRequest(rid, prompt_token_ids=tuple(ids), sampling=choice)
            engine.submit(request, stream.callback)
            state.inflight[rid] = stream
            streams.append(stream)
    except (RequestError, EngineDead) as e:
        end_all(state, streams, n)
        if isinstance(e, EngineDead):
            raise ApiError(503, str(e), code="engine_dead") from None
        raise ApiError(422, str(e), param=e.param) from None
    return Submitted(response_id, streams, n, echo)


def _end(
    state: ServerState, stream: RequestStream, last: GenerationOutput | None, first: bool
) -> None:
    """``first``: its prompt's first choice, which counts the prompt's tokens."""
    state.inflight.pop(stream.request_id, None)
    if not stream.finished:
        stream.abort()
        last = None
    state.record_finish(stream, last, prompt=first)


def end_all(
    state: ServerState,
    streams: list[RequestStream],
    n: int,
    lasts: Sequence[GenerationOutput | None] | None = None,
) -> None:
    """End every choice (``n`` per prompt), ``lasts[i]`` its last output: abort what the
    engine still runs, count each prompt's tokens once."""
    for i, stream in enumerate(streams):
        _end(state, stream, lasts[i] if lasts is not None else None, first=i % n == 0)
