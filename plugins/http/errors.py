"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``.

A body's message is one line and names no server internals: tracebacks and the
details of an exception go to the server's log, under the request's ``x-request-id``.
"""

from __future__ import annotations

from typing import Any

from rt.plugins.http.public import one_line

# The ``type`` OpenAI uses for each status we return.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
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
