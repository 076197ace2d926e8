"""The two generation routes: submit to the engine, then stream or collect.

A request is submitted before the response starts, so a request that can never
be served gets a real 4xx status. Whatever way a response ends (finished, client
gone, server stopping) its ``finally`` aborts the engine request if it is still
running, which frees its sequence and KV blocks at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
from rt.core.engine import GenerationOutput, GenerationRequest, merge_outputs
from rt.core.errors import EngineDead, RequestError
from rt.plugins.http import openai_api as oa
from rt.plugins.http import responses as rs
from rt.plugins.http.errors import ApiError, error_body
from rt.plugins.http.state import RequestStream, ServerState
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

log = logging.getLogger("rt.http")


async def _prompt_ids(engine: Any, parsed: oa.ParsedRequest) -> list[int]:
    # Tokenizing a long prompt takes milliseconds: do it off the event loop.
    try:
        if parsed.kind == "chat":
            text = await asyncio.to_thread(engine.apply_chat_template, list(parsed.messages))
            return await asyncio.to_thread(engine.encode, text, False)
        if parsed.prompt is not None:
            return await asyncio.to_thread(engine.encode, parsed.prompt)
    except Exception as e:  # a template that rejects the messages, say
        log.info("could not build the prompt", exc_info=True)
        raise ApiError(422, f"could not build the prompt: {type(e).__name__}: {e}") from None
    return list(parsed.prompt_token_ids or ())


async def _echo_text(engine: Any, parsed: oa.ParsedRequest, ids: list[int]) -> str | None:
    """The prompt as an echo shows it: the text sent, or its token ids' text."""
    if not parsed.echo:
        return None
    if parsed.prompt is not None:
        return parsed.prompt
    return await asyncio.to_thread(engine.decode, ids)


@attrs.frozen
class _Submitted:
    response_id: str
    streams: list[RequestStream]
    echo: str | None  # the prompt's text, when the response echoes it


async def _submit(
    state: ServerState, parsed: oa.ParsedRequest, scope: dict[str, Any]
) -> _Submitted:
    """Submit the request's ``n`` choices, each a sequence of its own. The request
    counts against the server's limit until the engine is done with every choice."""
    engine = state.engine()
    state.check_model(engine, parsed.model)
    ids = await _prompt_ids(engine, parsed)
    max_tokens = oa.resolve_max_tokens(parsed, len(ids), engine.max_model_len)
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
    response_id = rs.new_id(parsed.kind)
    left = [parsed.n]

    def engine_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            state.release(scope)

    streams: list[RequestStream] = []
    loop = asyncio.get_running_loop()
    try:
        for i in range(parsed.n):
            rid = response_id if parsed.n == 1 else f"{response_id}-{i}"
            ttft = state.metrics.ttft.observe if i == 0 else None
            stream = RequestStream(engine, rid, loop, ttft, on_engine_done=engine_done)
            choice = oa.choice_sampling(sampling, i)
            request = GenerationRequest(rid, prompt_token_ids=tuple(ids), sampling=choice)
            engine.submit(request, stream.callback)
            state.inflight[rid] = stream
            streams.append(stream)
    except (RequestError, EngineDead) as e:
        _end_all(state, streams)
        if isinstance(e, EngineDead):
            raise ApiError(503, str(e), code="engine_dead") from None
        raise ApiError(422, str(e), param=e.param) from None
    return _Submitted(response_id, streams, await _echo_text(engine, parsed, ids))


def _end(
    state: ServerState, stream: RequestStream, last: GenerationOutput | None, first: bool = True
) -> None:
    """``first``: the request's first choice, which counts its prompt tokens."""
    state.inflight.pop(stream.request_id, None)
    if not stream.finished:
        stream.abort()
        last = None
    state.record_finish(stream, last, prompt=first)


def _end_all(
    state: ServerState,
    streams: list[RequestStream],
    lasts: Sequence[GenerationOutput | None] | None = None,
) -> None:
    """:func:`_end` every choice, ``lasts[i]`` its last output; the first counts the
    prompt's tokens."""
    for i, stream in enumerate(streams):
        _end(state, stream, lasts[i] if lasts is not None else None, first=i == 0)


def _failure(out: GenerationOutput) -> ApiError | None:
    if out.finish_reason == "error":
        return ApiError(503, f"the engine failed the request: {out.error}", code="engine_error")
    if out.finish_reason == "abort":
        return ApiError(503, "the request was aborted: the server is shutting down")
    return None


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(stream: RequestStream) -> GenerationOutput:
    return merge_outputs([out async for out in stream.outputs()])


def _shown(parsed: oa.ParsedRequest, out: GenerationOutput) -> GenerationOutput:
    """What the client sees of a choice's output: without the token an echo of the
    prompt alone made."""
    return rs.echo_only(out) if parsed.echo_only else out


async def respond(state: ServerState, request: Request, parsed: oa.ParsedRequest) -> Response:
    submitted = await _submit(state, parsed, request.scope)
    streams = submitted.streams
    model = streams[0].engine.model_name
    if parsed.stream:
        return _EngineStream(_sse(state, submitted, parsed, model), streams, state)
    collect = asyncio.ensure_future(asyncio.gather(*map(_collect, streams)))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    outs: list[GenerationOutput] | None = None
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():
            return Response(status_code=499)  # nobody reads it: the client went away
        outs = [_shown(parsed, out) for out in collect.result()]
    finally:
        for task in (collect, gone):
            task.cancel()
        _end_all(state, streams, outs)
    for out in outs:
        failure = _failure(out)
        if failure is not None:
            raise failure
    if submitted.echo is not None:
        outs = [rs.echoed(out, submitted.echo) for out in outs]
    return JSONResponse(rs.full_response(parsed, submitted.response_id, model, outs))


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, GenerationOutput]]:
    """Every choice's outputs as they come, tagged with the choice's index."""
    if len(streams) == 1:
        async for out in streams[0].outputs():
            yield 0, out
        return
    queue: asyncio.Queue[tuple[int, GenerationOutput]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        async for out in stream.outputs():
            await queue.put((i, out))

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        for _ in range(len(streams)):  # until every choice has sent its last output
            while True:
                i, out = await queue.get()
                yield i, out
                if out.finished:
                    break
    finally:
        for task in pumps:
            task.cancel()


async def _sse(
    state: ServerState, submitted: _Submitted, parsed: oa.ParsedRequest, model: str
) -> AsyncIterator[str]:
    response_id, streams, echo = submitted.response_id, submitted.streams, submitted.echo
    offsets = [0] * len(streams)
    lasts: list[GenerationOutput | None] = [None] * len(streams)
    merged = _merged(streams)
    try:
        if parsed.kind == "chat":
            for i in range(len(streams)):
                yield _event(rs.chunk(parsed, response_id, model, None, first=True, index=i))
        async for i, out in merged:
            first, shown = lasts[i] is None, _shown(parsed, out)
            lasts[i] = shown
            failure = _failure(out)
            if failure is not None:
                yield _event(error_body(failure.status, failure.message, code=failure.code))
                break
            if echo is not None and first:  # the prompt (and its logprobs) comes first
                prompt = GenerationOutput(
                    out.request_id, "", (), prompt_logprobs=out.prompt_logprobs
                )
                yield _event(rs.chunk(parsed, response_id, model, rs.echoed(prompt, echo), index=i))
                offsets[i] = len(echo)
            if shown.text or shown.logprobs or shown.finished:
                chunk = rs.chunk(parsed, response_id, model, shown, text_offset=offsets[i], index=i)
                yield _event(chunk)
                offsets[i] += len(shown.text)
        else:
            if parsed.include_usage:
                yield _event(rs.usage_chunk(parsed, response_id, model, lasts))
        yield "data: [DONE]\n\n"
    finally:
        await merged.aclose()  # its tasks end now, not when it is collected
        _end_all(state, streams, lasts)


class _EngineStream(StreamingResponse):
    """A streaming response that aborts its engine request however it ends, also
    when the client left before the first chunk (the generator never started)."""

    def __init__(
        self, content: AsyncIterator[str], streams: list[RequestStream], state: ServerState
    ):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._streams = streams
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            _end_all(self._state, [s for s in self._streams if not s.finished])
