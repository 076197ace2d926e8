"""Reading a request's JSON body: a size limit, a deadline, and a server that stops.

A client that sends its headers and then too little of its body (a crashed client behind
a proxy that never closes, a slow-body attack) would otherwise hold its connection and a
task forever: Hypercorn's own timeouts cover only a connection with no complete request
(``keep_alive_timeout``). So the whole body must arrive within ``server.body_timeout_s``
of the handler's first read (408 past it), and a server that starts shutting down
answers a request still waiting for its body with 503 at once instead of holding the
shutdown for the grace period. Neither response reads the rest of the body: Hypercorn
then closes the connection. A client that leaves mid-body is counted as 499 (nginx's
"client closed request"), not logged as a server failure.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from rt.plugins.http.errors import ApiError, not_ready
from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")
# Bodies at least this large are decoded and parsed off the event loop (read_json).
OFF_LOOP_BYTES = 64 * 1024
# A UTF-16 surrogate (U+D800-U+DFFF) as a JSON escape (either case) or in UTF-8 bytes.
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


async def _body(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"the request body is larger than the limit of {limit} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    return bytes(body)


async def _body_in_time(
    request: Request, limit: int, timeout_s: float, closing: asyncio.Event
) -> bytes:
    reading = asyncio.ensure_future(_body(request, limit))
    stopping = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait((reading, stopping), timeout=timeout_s, return_when="FIRST_COMPLETED")
    finally:
        stopping.cancel()
        if not reading.done():
            reading.cancel()
    if reading.done() and not reading.cancelled():
        try:
            return reading.result()  # the body, or its 413
        except ClientDisconnect:
            # Gone mid-upload (a client's timeout, a cancelled call): no one reads an
            # answer, and it is not the server's failure. 499, as nginx logs it.
            raise ApiError(
                499, "the client closed the connection before its body arrived"
            ) from None
    if closing.is_set():
        raise not_ready("the server is shutting down")
    raise ApiError(
        408,
        f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)",
        code="request_timeout",
        headers={"Connection": "close"},
    )


async def read_json(
    request: Request,
    limit: int,
    timeout_s: float,
    closing: asyncio.Event,
    parse: Callable[[dict[str, Any]], T],
) -> T:
    """``parse`` of the request body as a JSON object: 413 past ``limit`` bytes, 408 if
    it is not all there within ``timeout_s``, 503 once ``closing`` is set, 400 if it is
    malformed (``parse`` raises its own errors).

    A body of :data:`OFF_LOOP_BYTES` or more is decoded and parsed on a worker thread:
    pure Python, it still holds the interpreter lock, but gives it up every few
    milliseconds (sys.getswitchinterval) where on the event loop it held up every other
    request and health check for the whole of it (~0.3 s for 300k token ids)."""
    body = await _body_in_time(request, limit, timeout_s, closing)
    if len(body) < OFF_LOOP_BYTES:
        return parse(_json_object(body))
    return await asyncio.to_thread(lambda: parse(_json_object(body)))


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, a 4300+-digit integer
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    found = _lone_surrogate(data) if _may_hold_surrogates(body) else None
    if found is not None:
        where, char = found
        raise ApiError(
            400,
            f"{where} is not valid Unicode: it holds the lone surrogate \\u{ord(char):04x} "
            "(a \\uD800-\\uDFFF escape must be one half of a pair)",
            param=where.split(".")[0].split("[")[0],
        )
    return data


def _may_hold_surrogates(body: bytes) -> bool:
    """Whether JSON ``body`` can decode to a string with a surrogate in it. Most bodies
    cannot, and skip the walk over every value (:func:`_lone_surrogate`). json.loads
    decodes with "surrogatepass", so one comes from a ``\\uD800``-``\\uDFFF`` escape,
    from such a code point's UTF-8 bytes (ED A0-BF ..), or from a UTF-16 or UTF-32
    body (json.detect_encoding: a BOM, or a zero byte among the first four)."""
    return bool(_SURROGATE.search(body)) or b"\x00" in body[:4] or body[:2] in _UTF16_BOMS


def _lone_surrogate(data: dict[str, Any]) -> tuple[str, str] | None:
    """A string in ``data`` that JSON's ``\\uD800`` escapes left unpaired, as (its path,
    the surrogate), or None: no tokenizer or UTF-8 encoder can take one. Iterative: a
    body may nest as deep as the JSON parser allows. Paths are built for containers and
    strings only: a list of 300k numbers costs a type check each."""
    todo: list[tuple[str, Any]] = [(key, value) for key, value in data.items()]
    while todo:
        where, value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return where, value[e.start]
        elif isinstance(value, dict):
            todo.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            todo.extend(
                (f"{where}[{i}]", item)
                for i, item in enumerate(value)
                if isinstance(item, (str, dict, list))
            )
    return None
