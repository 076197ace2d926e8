"""OpenAI error bodies on the errors Hypercorn answers itself, before rt sees a request.

Hypercorn's HTTP/1.1 protocol answers a request it cannot parse (400), or whose request
line and headers pass ``h11_max_incomplete_size`` (431), with an empty body and closes
the connection. A client of an OpenAI-compatible server expects ``{"error": {...}}`` on
every 4xx, naming what to fix. :func:`install` replaces the one method of Hypercorn's
H11 protocol that writes those answers (``_send_error_response(status_code)``) with one
that sends the body; where a Hypercorn release lacks it, nothing changes and the log
says so (``tests/http/test_faults.py`` fails, naming it).
"""

from __future__ import annotations

import json
import logging
from itertools import chain
from typing import Any

from rt.plugins.http.errors import error_body

log = logging.getLogger("rt.http")

MESSAGES = {
    400: "the request is not valid HTTP/1.1 (a malformed request line, header or chunked "
    "body); the connection is closed",
    431: "the request line and headers are larger than 16 KiB; send smaller headers (a "
    "prompt belongs in the JSON body)",
}


def body_for(status: int) -> bytes:
    message = MESSAGES.get(status, f"the server could not read the request (HTTP {status})")
    return json.dumps(error_body(status, message)).encode()


def install() -> bool:
    """Give Hypercorn's own HTTP/1.1 error responses an OpenAI error body; True if
    installed (idempotent)."""
    try:
        import h11
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError:  # pragma: no cover - both are dependencies
        return False
    original = getattr(H11Protocol, "_send_error_response", None)
    if original is None:
        log.warning("this Hypercorn has no H11Protocol._send_error_response: its own 4xx "
                    "answers keep empty bodies")  # fmt: skip
        return False
    if getattr(original, "_rt_error_body", False):
        return True

    async def send_error_response(self: Any, status_code: int) -> None:
        body = body_for(status_code)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        extra = self.config.response_headers("h11")
        await self._send_h11_event(
            h11.Response(status_code=status_code, headers=list(chain(headers, extra)))
        )
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    send_error_response._rt_error_body = True  # type: ignore[attr-defined]
    H11Protocol._send_error_response = send_error_response
    return True
