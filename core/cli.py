"""The ``rt`` command. Subcommands come from plugins through ``rt_register_commands``.

Start-up of the CLI itself, in order: parse the options that decide which plugins
load (``--plugins``, ``--profile``, ``--config``, ``--set``) and what may start at
CLI entry (``--sequential-startup``) wherever they sit on the command line; read
entry points; select; build a fresh plugin manager; let plugins register commands
and options; parse the full command line; run the handler. No torch is imported on this path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence

import attrs
from rt import __version__
from rt.core.cli_context import CliContext, config_option_pairs
from rt.core.config import Config
from rt.core.discovery import Catalog, discover
from rt.core.errors import RtError, StageFailed, debug_enabled, user_error
from rt.core.output import GuardedStdout, finish_output
from rt.core.pluginmanager import RtPluginManager, build_plugin_manager
from rt.core.profile_registry import load_config
from rt.core.selection import Selection, select


def add_config_options(parser: argparse.ArgumentParser, suppress: bool = True) -> None:
    """The options every command takes: they decide the plugins and the config."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("plugins and configuration")
    group.add_argument(
        "-p",
        "--plugins",
        action="append",
        default=argparse.SUPPRESS if suppress else [],
        metavar="LIST",
        help="plugins to select, comma-separated; no:NAME blocks one (built-ins too)",
    )
    group.add_argument(
        "--profile", default=default, metavar="NAME", help="profile name or path to a TOML file"
    )
    group.add_argument("--config", default=default, metavar="FILE", help="TOML config file")
    group.add_argument(
        "--set",
        action="append",
        default=argparse.SUPPRESS if suppress else [],
        metavar="KEY=VALUE",
        help="set any config key, e.g. --set server.port=9000 (repeatable)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="on an error, print the Python traceback too (same as RT_DEBUG=1)",
    )


def add_startup_options(parser: argparse.ArgumentParser) -> None:
    """Options of commands that run the startup graph (serve, generate, bench)."""
    group = parser.add_argument_group("startup")
    group.add_argument(
        "--tp",
        dest="parallel.tp",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="tensor-parallel size (number of ranks)",
    )
    group.add_argument(
        "--startup-trace",
        dest="startup.trace",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="write the startup timeline as Chrome-trace JSON (open it in Perfetto)",
    )
    group.add_argument(
        "--sequential-startup",
        dest="startup.sequential",
        action="store_const",
        const=True,
        default=argparse.SUPPRESS,
        help="run the startup stages one at a time (the baseline)",
    )
    group.add_argument(
        "--no-zygote",
        dest="zygote.use",
        action="store_const",
        const="off",
        default=argparse.SUPPRESS,
        help="start the rank processes without asking a zygote (`rt zygote start`)",
    )
    group.add_argument(
        "--offline",
        dest="model.offline",
        action="store_const",
        const=True,
        default=argparse.SUPPRESS,
        help="never download: a hub id must be in the local cache (as HF_HUB_OFFLINE=1)",
    )


def _early_args(argv: Sequence[str]) -> tuple[argparse.Namespace, str]:
    """The plugin/config options wherever they are, and the subcommand name ("" if none)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_config_options(parser, suppress=False)
    # The one dedicated flag that decides what may start at CLI entry (rt_cli_start):
    # the sequential baseline overlaps nothing, so its imports must not start early.
    parser.add_argument("--sequential-startup", dest="sequential_startup", action="store_true")
    # So is --no-zygote: at CLI entry a zygote, asked first, stands in for the forkserver.
    parser.add_argument("--no-zygote", dest="no_zygote", action="store_true")
    early, rest = parser.parse_known_args(list(argv))
    command = next((a for a in rest if not a.startswith("-")), "")
    return early, command


def _early_pairs(early: argparse.Namespace) -> list[tuple[str, object, str]]:
    pairs = config_option_pairs(early)
    if early.sequential_startup:
        pairs.append(("startup.sequential", True, "--sequential-startup"))
    if early.no_zygote:
        pairs.append(("zygote.use", "off", "--no-zygote"))
    return pairs


def build_parser(pm: RtPluginManager, command: str = "") -> argparse.ArgumentParser:
    """The full parser, or for ``command`` (a subcommand's name, as :func:`resolve`
    found it) one that completes only that subcommand's options and registers no
    benchmarks unless it is ``bench``: the options and benchmark modules of every
    other command cost a start ~30-60 ms (imports, argparse, gettext lookups)."""
    parser = argparse.ArgumentParser(
        prog="rt",
        description="rt: an LLM serving runtime whose startup is fast, visible and swappable.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"rt {__version__}")
    add_config_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    pm.hook.rt_register_commands(subparsers=subparsers)
    only = command if command == "bench" or command in subparsers.choices else None
    _add_bench_command(pm, subparsers, benchmarks=only in (None, "bench"))
    for name, sub in subparsers.choices.items():
        if only is None or name == only:
            add_config_options(sub)
            pm.hook.rt_add_options(parser=sub, command=name)
    return parser


def _add_bench_command(
    pm: RtPluginManager, subparsers: argparse._SubParsersAction, benchmarks: bool = True
) -> None:
    """``rt bench NAME``: benchmarks come from plugins via ``rt_register_benchmarks``
    (without ``benchmarks``, the command alone: another command is running)."""
    bench = subparsers.add_parser(
        "bench", help="benchmarks (startup, generate, serve, compile-cache, broadcast)"
    )
    if not benchmarks:
        return
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    pm.hook.rt_register_benchmarks(subparsers=bench_sub)
    for name, sub in bench_sub.choices.items():
        add_config_options(sub)
        pm.hook.rt_add_options(parser=sub, command=f"bench {name}")
    bench.set_defaults(handler=lambda args, cli: bench.print_help() or 2)


@attrs.frozen
class Resolved:
    """What the CLI knows of a command line before any plugin runs: the subcommand, the
    config its plugin spec comes from, and the plugins selected."""

    early: argparse.Namespace
    command: str
    base: Config
    catalog: Catalog
    selection: Selection


def resolve(argv: Sequence[str]) -> Resolved:
    """Read the options that decide the plugins, the config and the entry points."""
    early, command = _early_args(argv)
    # The plugin spec may come from the profile, the config file, RT_PLUGINS and
    # --plugins; resolving the config here also reports a bad file before anything runs.
    profile = early.profile
    if command == "bench" and profile and "," in profile:
        # `rt bench startup --profile A,B,C` compares profiles, each start loading its
        # own; the plugins the bench command itself runs with come from the first
        profile = profile.split(",")[0]
    base = load_config(profile, early.config, os.environ, _early_pairs(early))
    catalog = discover()
    return Resolved(early, command, base, catalog, select(catalog, base.plugins))


def _run(argv: Sequence[str], resolved: Resolved | None) -> int:
    r = resolve(argv) if resolved is None else resolved
    pm, stages = build_plugin_manager(r.selection)
    cli_start = time.time()
    pm.hook.rt_cli_start(command=r.command, config=r.base)
    parser = build_parser(pm, r.command)
    args = parser.parse_args(list(argv))
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    cli = CliContext(r.early, r.catalog, r.selection, pm, stages, cli_start)
    return int(handler(args, cli) or 0)


def main(argv: Sequence[str] | None = None, resolved: Resolved | None = None) -> int:
    """Run ``rt ARGV`` here; ``resolved``: :func:`resolve` of the same ``argv``, when the
    caller already needed it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    before = os.environ.get("RT_DEBUG")
    if _wants_debug(argv):
        # --debug is RT_DEBUG=1 for this run, so the rank processes it starts inherit it.
        os.environ["RT_DEBUG"] = "1"
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, GuardedStdout):
        sys.stdout = GuardedStdout(stdout)  # a failed write is an OutputError: output.py
    try:
        return _run(argv, resolved)
    except RtError as e:
        return report_error(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rt ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    finally:
        sys.stdout = stdout
        if before is None:
            os.environ.pop("RT_DEBUG", None)
        else:
            os.environ["RT_DEBUG"] = before


def _wants_debug(argv: Sequence[str]) -> bool:
    """``--debug`` anywhere before ``--``: read before parsing, which can fail too."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in options


def report_error(error: RtError) -> int:
    """Print ``error`` for a user and return the exit code.

    One line, ``rt: error: MESSAGE``, when the user can fix it, also when a startup
    stage raised it (the message names the value and the fix; a traceback only buries
    it). A stage that crashed on a bug prints its original traceback: that is the report.
    """
    user = user_error(error)
    if user is None:
        print(f"rt: error: {error}", file=sys.stderr)
        return error.exit_code
    if debug_enabled():
        if isinstance(error, StageFailed):  # the stage, the plugin, the original traceback
            print(error, file=sys.stderr)
        else:
            traceback.print_exception(error, file=sys.stderr)
    print(f"rt: error: {user}", file=sys.stderr)
    return user.exit_code


def console_main() -> None:
    """The ``rt`` executable (and ``python -m rt``): ``main()``, then exit at once.

    By the time ``main`` returns, every runtime has run ``rt_shutdown`` (ranks stopped,
    process groups destroyed, files written). Skipping the interpreter's teardown saves
    ~0.5 s of freeing torch state, and avoids C++ threads of torch.distributed that can
    abort ("terminate called without an active exception") when destroyed at exit.
    """
    os._exit(finish_output(main()))


if __name__ == "__main__":
    console_main()
