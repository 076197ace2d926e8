"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

A body's message is one line and names no server internals: tracebacks and the
details of an exception go to the server's log, under the request's ``x-request-id``.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute file path of two or more parts (/home/u/models/x.safetensors,
# /usr/lib/python3/site-packages/...): what a server must not tell its clients.
_FILE_PATH = re.compile(r"(?<![\w/.:])(?:/[\w.+@~-]+){2,}/?")

# The ``type`` OpenAI uses for each status we return.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """Raised anywhere in a route; the app turns it into an OpenAI error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def one_line(message: str) -> str:
    """The first non-empty line of ``message``: never a traceback that follows it."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def public_message(text: str) -> str:
    """``text`` (an exception's message, say) fit for a client: one line, with every
    absolute file path cut to its last part (``.../model.safetensors``)."""
    return _FILE_PATH.sub(
        lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], one_line(text)
    )


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": one_line(message),
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: ApiError) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code),
        status_code=error.status,
        headers=error.headers,
    )


def not_ready(message: str, retry_after_s: int = 2) -> ApiError:
    return ApiError(503, message, code="not_ready", headers={"Retry-After": str(retry_after_s)})
