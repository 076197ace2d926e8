"""What the routes share: the runtime, the metrics, the requests in flight.

``RequestStream`` is the bridge from the engine thread to the event loop: the
engine calls ``callback`` on its own thread, which hands the output to the
request's asyncio queue with ``call_soon_threadsafe``; the loop never waits on
the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from rt.core.config import ServerConfig
from rt.core.engine import Engine, GenerationOutput
from rt.plugins.http.errors import ApiError, not_ready
from rt.plugins.http.metrics import ServerMetrics
from rt.plugins.http.public import public_message

log = logging.getLogger("rt.http")
# The ASGI scope key that marks a request counted by ServerState.admit.
ADMITTED = "rt.admitted"


def startup_failure(error: BaseException) -> str:
    """A one-line summary of a failed startup: never the traceback, no file paths."""
    stage = getattr(error, "stage", None)
    cause = getattr(error, "cause", None)
    if stage is not None and cause is not None:
        plugin = getattr(error, "plugin", None)
        who = f" in plugin {plugin!r}" if plugin else ""
        return public_message(
            f"startup stage {stage!r} failed{who}: {type(cause).__name__}: {cause}"
        )
    return public_message(str(error))


class RequestStream:
    """One generation request's outputs, delivered on the event loop."""

    def __init__(
        self,
        engine: Engine,
        request_id: str,
        loop: asyncio.AbstractEventLoop,
        on_first_token: Callable[[float], None] | None = None,
        on_engine_done: Callable[[], None] | None = None,
    ):
        self.engine = engine
        self._on_first_token = on_first_token  # called with the time to first token
        # called on the loop once the engine has sent its last output, however slowly
        # the client reads them
        self._on_engine_done = on_engine_done
        self.request_id = request_id
        self.loop = loop
        self.arrival = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished = False
        self._queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()

    def callback(self, output: GenerationOutput) -> None:
        """Called on the engine thread."""
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, output)
            if output.finished and self._on_engine_done is not None:
                self.loop.call_soon_threadsafe(self._on_engine_done)
        except RuntimeError:  # the loop is closed: the server is gone
            pass

    async def outputs(self) -> AsyncIterator[GenerationOutput]:
        while not self.finished:
            output = await self._queue.get()
            if output.token_ids and self.first_token_at is None:
                self.first_token_at = time.perf_counter()
                if self._on_first_token is not None:  # now, not when the request ends
                    self._on_first_token(self.first_token_at - self.arrival)
            if output.finished:
                self.finished = True
            yield output

    def abort(self) -> None:
        """Free the request's sequence and KV blocks now, unless it already ended."""
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)


class ServerState:
    def __init__(self, config: ServerConfig, runtime: Any):
        self.config = config
        self.runtime = runtime
        self.metrics = ServerMetrics(runtime)
        self.inflight: dict[str, RequestStream] = {}
        self.draining = False
        # Set (in the server's event loop) when shutdown starts: requests still waiting
        # for their bodies answer 503 at once (body.py).
        self.closing = asyncio.Event()
        self.started_at = int(time.time())
        # Generation requests between admit() and release() (ServerState.admit says when).
        self.admitted = 0
        self.metrics.admitted.set_function(lambda: self.admitted)

    def admit(self, scope: dict[str, Any], choices: int = 1) -> None:
        """Count a generation request's ``choices`` (each a sequence in the engine) in, or
        429 past ``server.max_concurrent_requests``. They are counted out once the engine
        is done with the last (a client that reads its stream slowly holds no place), or
        else when the response ends (the app's middleware)."""
        limit = self.config.max_concurrent_requests
        if choices > limit:
            raise ApiError(
                422,
                f"the request asks for {choices} choices (prompts x n), more than the "
                f"{limit} this server serves at once (server.max_concurrent_requests); send "
                "fewer prompts or a smaller n",
                param="n",
            )
        if self.admitted + choices > limit:
            raise ApiError(
                429,
                f"the server is serving its limit of {limit} requests (choices) at once "
                "(server.max_concurrent_requests); retry shortly",
                code="too_many_requests",
                headers={"Retry-After": "1"},
            )
        self.admitted += choices
        scope[ADMITTED] = choices

    def release(self, scope: dict[str, Any]) -> None:
        self.admitted -= scope.pop(ADMITTED, 0)

    def engine(self) -> Engine:
        """The engine, or a 503 that says why there is none yet."""
        runtime = self.runtime
        if self.draining:
            raise not_ready("the server is shutting down")
        if runtime.failed is not None:
            raise ApiError(503, startup_failure(runtime.failed), code="startup_failed")
        if not runtime.ready.is_set():
            running = self.stages_in("running")
            raise not_ready(
                "the server is starting; stages still running: " + (", ".join(running) or "-")
            )
        engine = runtime.services.get("engine")
        if engine is None:
            raise ApiError(
                503, "startup finished but no plugin published an engine", code="no_engine"
            )
        if engine.dead_reason is not None:
            raise ApiError(503, public_message(engine.dead_reason), code="engine_dead")
        return engine

    def stages_in(self, state: str) -> list[str]:
        return sorted(n for n, v in self.runtime.stage_state.items() if v == state)

    def check_api_key(self, authorization: str | None) -> None:
        key = self.config.api_key
        if not key:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), key.encode()
        ):
            raise ApiError(
                401,
                "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    def served_names(self, engine: Engine) -> set[str]:
        names = {engine.model_name}
        source = getattr(getattr(self.runtime.config, "model", None), "source", None)
        if source:
            names.add(source)
        return names

    def check_model(self, engine: Engine, model: str | None) -> None:
        if model is None or model in self.served_names(engine):
            return
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves {engine.model_name!r}",
            param="model",
            code="model_not_found",
        )

    def record_finish(
        self, stream: RequestStream, output: GenerationOutput | None, prompt: bool = True
    ) -> None:
        """Count one choice's end; ``prompt``: count its prompt's tokens too (a request's
        first choice: its other choices share the prompt)."""
        m = self.metrics
        reason = output.finish_reason if output is not None else "abort"
        m.finished.labels(reason or "abort").inc()
        if output is None:
            return
        now = time.perf_counter()
        m.e2e.observe(now - stream.arrival)
        if prompt:
            m.prompt_tokens.inc(output.prompt_tokens)
        m.completion_tokens.inc(output.completion_tokens)
