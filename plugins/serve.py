"""Built-in plugin ``serve``: the ``rt serve`` command.

It runs the whole startup graph in the driver, prints the timeline, writes the
Chrome trace when asked, and then serves until the frontend stops.
``--startup-only`` exits 0 once startup (warmup included) is done: the way to
pre-warm caches in an image build and to benchmark startup.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rt.core import hookimpl
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext
from rt.core.runtime import Runtime
from rt.core.startup import run_startup
from rt.core.timeline_export import to_table, write_chrome_trace


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument(
        "model", nargs="?", default=argparse.SUPPRESS,
        help="model folder or hub id (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--startup-only", action="store_true",
        help="run the whole startup graph, print the timeline and exit 0",
    )
    add_startup_options(p)
    p.set_defaults(handler=serve_command)


def finish_startup_report(runtime: Runtime) -> None:
    """Print the timeline (stderr) and write the trace, also after a failure."""
    config = runtime.config
    if config.startup.print_timeline:
        print(to_table(runtime.timeline), file=sys.stderr)
    if config.startup.trace:
        write_chrome_trace(runtime.timeline, config.startup.trace)
        print(f"startup trace written to {config.startup.trace}", file=sys.stderr)


def serve_command(args: argparse.Namespace, cli: CliContext) -> int:
    extra = [("model.source", args.model, "MODEL")] if getattr(args, "model", None) else []
    config = cli.config(args, extra)
    runtime = cli.create_runtime(config)
    try:
        try:
            run_startup(runtime)
        finally:
            finish_startup_report(runtime)
        if args.startup_only:
            return 0
        frontend = runtime.results.get("frontend")
        if frontend is None or not hasattr(frontend, "wait"):
            print("rt: no frontend is running (the frontend stage was skipped)", file=sys.stderr)
            return 1
        return int(frontend.wait() or 0)
    finally:
        runtime.shutdown()
