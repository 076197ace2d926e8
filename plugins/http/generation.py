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
from collections.abc import AsyncIterator
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


async def _submit(
    state: ServerState, parsed: oa.ParsedRequest, scope: dict[str, Any]
) -> RequestStream:
    engine = state.engine()
    state.check_model(engine, parsed.model)
    ids = await _prompt_ids(engine, parsed)
    max_tokens = oa.resolve_max_tokens(parsed, len(ids), engine.max_model_len)
    try:
        sampling = attrs.evolve(parsed.sampling, max_tokens=max_tokens)
    except (TypeError, ValueError) as e:
        raise ApiError(422, str(e)) from None
    request_id = rs.new_id(parsed.kind)
    stream = RequestStream(
        engine,
        request_id,
        asyncio.get_running_loop(),
        state.metrics.ttft.observe,
        on_engine_done=lambda: state.release(scope),
    )
    request = GenerationRequest(request_id, prompt_token_ids=tuple(ids), sampling=sampling)
    try:
        engine.submit(request, stream.callback)
    except RequestError as e:
        raise ApiError(422, str(e), param=e.param) from None
    except EngineDead as e:
        raise ApiError(503, str(e), code="engine_dead") from None
    state.inflight[request_id] = stream
    return stream


def _end(state: ServerState, stream: RequestStream, last: GenerationOutput | None) -> None:
    state.inflight.pop(stream.request_id, None)
    if not stream.finished:
        stream.abort()
        last = None
    state.record_finish(stream, last)


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


async def respond(state: ServerState, request: Request, parsed: oa.ParsedRequest) -> Response:
    stream = await _submit(state, parsed, request.scope)
    model = stream.engine.model_name
    if parsed.stream:
        return _EngineStream(_sse(state, stream, parsed, model), stream, state)
    collect = asyncio.ensure_future(_collect(stream))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    last: GenerationOutput | None = None
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not collect.done():
            return Response(status_code=499)  # nobody reads it: the client went away
        last = collect.result()
    finally:
        for task in (collect, gone):
            task.cancel()
        _end(state, stream, last)
    failure = _failure(last)
    if failure is not None:
        raise failure
    return JSONResponse(rs.full_response(parsed, stream.request_id, model, last))


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _sse(
    state: ServerState, stream: RequestStream, parsed: oa.ParsedRequest, model: str
) -> AsyncIterator[str]:
    rid = stream.request_id
    offset = 0
    last: GenerationOutput | None = None
    try:
        if parsed.kind == "chat":
            yield _event(rs.chunk(parsed, rid, model, None, first=True))
        async for out in stream.outputs():
            last = out
            failure = _failure(out)
            if failure is not None:
                yield _event(error_body(failure.status, failure.message, code=failure.code))
                break
            if out.text or out.logprobs or out.finished:
                yield _event(rs.chunk(parsed, rid, model, out, text_offset=offset))
                offset += len(out.text)
            if out.finished and parsed.include_usage:
                yield _event(rs.usage_chunk(parsed, rid, model, out))
        yield "data: [DONE]\n\n"
    finally:
        _end(state, stream, last)


class _EngineStream(StreamingResponse):
    """A streaming response that aborts its engine request however it ends, also
    when the client left before the first chunk (the generator never started)."""

    def __init__(self, content: AsyncIterator[str], stream: RequestStream, state: ServerState):
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._stream = stream
        self._state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._stream.finished:
                _end(self._state, self._stream, None)
