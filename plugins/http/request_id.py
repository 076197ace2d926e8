"""``x-request-id``: every response carries one, and the log names it.

A client may send its own (a proxy's trace id, say): a short id of safe characters
is kept, anything else replaced. Routes read it with :func:`request_id`; an error
logged with it can be found from the response a user reports.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: dict[str, Any]) -> str:
    """The id :class:`RequestIds` gave this request ("-" outside the middleware)."""
    return scope.get("state", {}).get("request_id", "-")


class RequestIds:
    """Pure ASGI middleware (it must not buffer streams): name each HTTP request."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), b"")
        rid = given.decode() if _SAFE.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)
