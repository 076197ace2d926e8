"""The two generation routes: submit to the engine (``submission.py``), then stream or
collect.

A request is submitted before the response starts, so a request that can never
be served gets a real 4xx status. Whatever way a response ends (finished, client
gone, server stopping) its ``finally`` aborts the engine request if it is still
running, which frees its sequence and KV blocks at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from rt.core.engine import GenerationOutput, merge_outputs
from rt.plugins.http import openai_api as oa
from rt.plugins.http import responses as rs
from rt.plugins.http.errors import ApiError, error_body
from rt.plugins.http.state import RequestStream, ServerState
from rt.plugins.http.submission import Submitted, end_all, submit
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse


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
    submitted = await submit(state, parsed, request.scope)
    streams, n = submitted.streams, submitted.n
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
        end_all(state, streams, n, outs)
    for out in outs:
        failure = _failure(out)
        if failure is not None:
            raise failure
    if submitted.echo is not None:
        outs = [rs.echoed(out, submitted.echo[i // n]) for i, out in enumerate(outs)]
    return JSONResponse(rs.full_response(parsed, submitted.response_id, model, outs, n))


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
    state: ServerState, submitted: Submitted, parsed: oa.ParsedRequest, model: str
) -> AsyncIterator[str]:
    response_id, streams, echo = submitted.response_id, submitted.streams, submitted.echo
    n = submitted.n
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
                text = echo[i // n]
                prompt = GenerationOutput(
                    out.request_id, "", (), prompt_logprobs=out.prompt_logprobs
                )
                yield _event(rs.chunk(parsed, response_id, model, rs.echoed(prompt, text), index=i))
                offsets[i] = len(text)
            if shown.text or shown.logprobs or shown.finished:
                chunk = rs.chunk(parsed, response_id, model, shown, text_offset=offsets[i], index=i)
                yield _event(chunk)
                offsets[i] += len(shown.text)
        else:
            if parsed.include_usage:
                yield _event(rs.usage_chunk(parsed, response_id, model, lasts, n))
        yield "data: [DONE]\n\n"
    finally:
        await merged.aclose()  # its tasks end now, not when it is collected
        end_all(state, streams, n, lasts)


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
            # (nothing is counted for these: the others were ended with their outputs)
            end_all(self._state, [s for s in self._streams if not s.finished], 1)
