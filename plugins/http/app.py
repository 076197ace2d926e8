"""The Starlette app: routes, the API-key and body-size checks, error bodies.

``/health``, ``/ready``, ``/metrics``, ``/startup`` and ``/openapi.json`` are
operational endpoints and stay open; the OpenAI routes under ``/v1`` and vLLM's
``/tokenize`` and ``/detokenize`` need the API key when one is set. Every response carries an ``x-request-id`` (``request_id.py``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from rt.core.engine import engine_death
from rt.core.timeline_export import to_json
from rt.plugins.http import openai_api as oa
from rt.plugins.http import openapi, startup_page, tokens
from rt.plugins.http.body import read_json
from rt.plugins.http.errors import ApiError, error_body, error_response
from rt.plugins.http.generation import respond
from rt.plugins.http.metrics import CONTENT_TYPE
from rt.plugins.http.public import public_data
from rt.plugins.http.request_id import RequestIds, request_id
from rt.plugins.http.state import ServerState, startup_failure
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("rt.http")

ROUTES = (
    "/health",
    "/openapi.json",
    "/ready",
    "/metrics",
    "/startup",
    "/v1/models",
    "/v1/models/{model}",
    "/v1/completions",
    "/v1/chat/completions",
    "/tokenize",
    "/detokenize",
)


def build_app(state: ServerState, started: threading.Event) -> Starlette:
    limit, body_timeout_s = state.config.max_body_bytes, state.config.body_timeout_s

    async def parsed_body(
        request: Request, parse: Callable[[dict[str, Any]], oa.ParsedRequest]
    ) -> oa.ParsedRequest:
        parsed = await read_json(request, limit, body_timeout_s, state.closing, parse)
        # Counted once its body is in (a slow upload must not hold a place), each choice.
        state.admit(request.scope, parsed.num_choices)
        return parsed

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(openapi.document(api_key=bool(state.config.api_key)))

    async def ready(request: Request) -> Response:
        runtime = state.runtime
        if runtime.failed is not None:
            body = {"status": "failed", "error": startup_failure(runtime.failed)}
            return JSONResponse(body, status_code=503)
        dead = engine_death(runtime)
        if dead is not None:
            return JSONResponse({"status": "dead", "error": dead}, status_code=503)
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not runtime.ready.is_set() or runtime.services.get("engine") is None:
            body = {
                "status": "starting",
                "running": state.stages_in("running"),
                "pending": state.stages_in("pending"),
            }
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    async def startup(request: Request) -> Response:
        if request.query_params.get("format") == "html":
            return HTMLResponse(startup_page.render(state.runtime))
        data = public_data(to_json(state.runtime.timeline))
        data["ready"] = state.runtime.ready.is_set()
        data["stage_state"] = dict(state.runtime.stage_state)
        return JSONResponse(data)

    def model_card() -> dict[str, Any]:
        engine = state.engine()
        return {
            "id": engine.model_name,
            "object": "model",
            "created": state.started_at,
            "owned_by": "rt",
            "max_model_len": engine.max_model_len,
        }

    async def models(request: Request) -> Response:
        state.check_api_key(request.headers.get("authorization"))
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def one_model(request: Request) -> Response:
        # OpenAI's "retrieve model" (client.models.retrieve); ids may hold slashes
        state.check_api_key(request.headers.get("authorization"))
        card = model_card()
        state.check_model(state.engine(), request.path_params["model"])
        return JSONResponse(card)

    async def completions(request: Request) -> Response:
        state.check_api_key(request.headers.get("authorization"))
        state.engine()  # 503 before reading a body we could not serve
        return await respond(state, request, await parsed_body(request, oa.parse_completion))

    async def chat(request: Request) -> Response:
        state.check_api_key(request.headers.get("authorization"))
        state.engine()
        return await respond(state, request, await parsed_body(request, oa.parse_chat))

    async def tokenize(request: Request) -> Response:
        state.check_api_key(request.headers.get("authorization"))
        engine = state.engine()
        body = await read_json(request, limit, body_timeout_s, state.closing, tokens.parse_tokenize)
        state.check_model(engine, body.model)
        return JSONResponse(await tokens.tokenize(engine, body))

    async def detokenize(request: Request) -> Response:
        state.check_api_key(request.headers.get("authorization"))
        engine = state.engine()
        body = await read_json(
            request, limit, body_timeout_s, state.closing, tokens.parse_detokenize
        )
        state.check_model(engine, body.model)
        return JSONResponse(await tokens.detokenize(engine, body))

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        else:
            message = f"{exc.detail} ({request.method} {request.url.path})"
        code = "not_found" if exc.status_code == 404 else None
        return JSONResponse(
            error_body(exc.status_code, message, code=code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def on_crash(request: Request, exc: Exception) -> Response:
        rid = request_id(request.scope)
        log.error("request %s: %s %s failed", rid, request.method, request.url.path, exc_info=exc)
        body = error_body(500, "internal server error; the server log has the details")
        return JSONResponse(body, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.set()
        yield

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/openapi.json", openapi_json),
            Route("/ready", ready),
            Route("/metrics", metrics),
            Route("/startup", startup),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", one_model),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/detokenize", detokenize, methods=["POST"]),
        ],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
        lifespan=lifespan,
    )
    return _CountRequests(RequestIds(app), state)


def _route_label(path: str) -> str:
    """The metrics label of a path: its route (a model id is not a label value)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class _CountRequests:
    """Pure ASGI middleware (it must not buffer streams): count by route and status, and
    count out an admitted generation request once its response has ended, if the engine
    did not first (ServerState.admit)."""

    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route_label(scope["path"])
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.state.release(scope)  # a request that failed before the engine ended it
            self.state.metrics.requests.labels(route, str(status)).inc()
