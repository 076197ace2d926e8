"""Built-in plugin ``bench``: ``rt bench generate``, ``rt bench startup``, ``rt bench broadcast``,
``rt bench serve``, ``rt bench compile-cache``.

Each benchmark runs the systems it compares in separate child processes of one
invocation, so figures are measured side by side on the same machine and each
child's peak memory is its own.
"""

from __future__ import annotations

from typing import Any

from rt.core import hookimpl


@hookimpl
def rt_register_benchmarks(subparsers: Any) -> None:
    from rt.plugins.bench import broadcast, compile_cache, generate, serve, startup

    generate.register(subparsers)
    startup.register(subparsers)
    broadcast.register(subparsers)
    serve.register(subparsers)
    compile_cache.register(subparsers)
