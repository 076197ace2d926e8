"""Built-in plugin ``http``: the ``frontend`` stage, an OpenAI-compatible server.

Light at import time (``rt plugins`` imports it): Starlette, Hypercorn and
prometheus_client are imported when the ``frontend`` stage runs. The server
calls the engine only through ``rt.core.engine.Engine``, which it finds as
``runtime.services["engine"]`` once ``runtime.ready`` is set.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rt.core import hookimpl, note


@hookimpl
def rt_add_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command != "serve":
        return
    group = parser.add_argument_group("HTTP server")
    S = argparse.SUPPRESS
    group.add_argument("--host", dest="server.host", default=S, help="address to bind")
    group.add_argument(
        "--port", dest="server.port", type=int, default=S, help="port (0 picks a free one)"
    )
    group.add_argument(
        "--api-key",
        dest="server.api_key",
        default=S,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1 routes (or set RT_API_KEY)",
    )


@hookimpl
def rt_configure(runtime: Any) -> None:
    if any(stage.name == "frontend" for stage in runtime.stages):
        from rt.plugins.http.signals import SERVICE, EarlySigterm

        early = EarlySigterm(runtime)
        early.install()
        runtime.services[SERVICE] = early


@hookimpl
def rt_resident_preload() -> dict[str, str]:
    # Starlette, Hypercorn and prometheus_client: ~0.2-0.3 s of every start's frontend.
    import hypercorn.asyncio  # noqa: F401
    import hypercorn.config  # noqa: F401
    import rt.plugins.http.metrics  # noqa: F401
    import rt.plugins.http.server  # noqa: F401

    return {"http": "Starlette, Hypercorn, prometheus_client"}


@hookimpl(trylast=True)
def rt_frontend(config: Any, runtime: Any) -> Any:
    from rt.plugins.http.server import HttpServer

    server = HttpServer(config.server, runtime)
    server.start()
    note("url", server.url)
    print(
        f"rt: serving on {server.url} (startup page: {server.url}/startup?format=html)",
        file=sys.stderr,
        flush=True,
    )
    return server


@hookimpl
def rt_shutdown(runtime: Any) -> None:
    server = runtime.results.get("frontend")
    if type(server).__module__ == "rt.plugins.http.server":
        server.stop()
    early = runtime.services.get("http.signals")
    if early is not None:
        early.restore()
