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


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument(
        "model",
        nargs="?",
        default=argparse.SUPPRESS,
        help="model folder or hub id (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--startup-only",
        action="store_true",
        help="run the whole startup graph, print the timeline and exit 0",
    )
    add_startup_options(p)
    p.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace, cli: CliContext) -> int:
    # Imported here, not at module level: every `rt` command imports this module
    # before rt_cli_start, and the startup machinery is not needed until now.
    from rt.core.startup import report_startup, run_startup

    extra = [("model.source", args.model, "MODEL")] if getattr(args, "model", None) else []
    config = cli.config(args, extra)
    runtime = cli.create_runtime(config)
    try:
        try:
            scheduler = run_startup(runtime)
            if args.startup_only:
                # "The whole graph": background stages (p2p-check) finish too.
                scheduler.wait_background()
        finally:
            report_startup(runtime)
        if args.startup_only:
            return 0
        frontend = runtime.results.get("frontend")
        if frontend is None or not hasattr(frontend, "wait"):
            print("rt: no frontend is running (the frontend stage was skipped)", file=sys.stderr)
            return 1
        return int(frontend.wait() or 0)
    finally:
        runtime.shutdown()
