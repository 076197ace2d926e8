"""Build a runtime from a selection and run its startup graph."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rt.core.config import Config
from rt.core.graph import subgraph
from rt.core.pluginmanager import build_plugin_manager
from rt.core.runtime import Runtime
from rt.core.scheduler import StageScheduler
from rt.core.selection import Selection
from rt.core.stage import Stage
from rt.core.timeline import Timeline
from rt.core.timeline_export import to_table, write_chrome_trace


def create_runtime(
    config: Config,
    selection: Selection,
    *,
    rank: int = 0,
    world_size: int | None = None,
    only_where: str | None = None,
    exclude: Iterable[str] = (),
    extra_plugins: Iterable[tuple[str, object]] = (),
    extra_stages: Sequence[Stage] = (),
    timeline: Timeline | None = None,
    driver: bool | None = None,
) -> Runtime:
    """A runtime with a fresh plugin manager.

    The driver runs every stage (the ``ranks`` ones as rank 0), or only the
    ``driver`` stages when rank 0 has a process of its own (``parallel.rank0 =
    "process"``); a TP rank passes ``only_where="ranks"``; a command that has no
    use for a stage passes ``exclude`` (``rt generate`` excludes ``frontend``).
    """
    if only_where is None and config.parallel.rank0 == "process":
        only_where = "driver"
    pm, stages = build_plugin_manager(selection, extra_plugins, extra_stages)
    excluded = set(exclude)
    keep = [
        s.name
        for s in stages
        if s.name not in excluded and (only_where is None or s.where == only_where)
    ]
    return Runtime(
        config,
        pm,
        selection,
        subgraph(stages, keep),
        rank=rank,
        world_size=world_size,
        timeline=timeline,
        driver=driver,
    )


def run_startup(runtime: Runtime) -> StageScheduler:
    """``rt_configure``, then the stage graph; returns once the runtime is ready.

    Raises the first stage failure. Background stages may still be running; the
    returned scheduler can wait for them.
    """
    from rt.core.limits import check_open_files_limit

    check_open_files_limit()  # below it, process-group set-up fails without saying why
    runtime.configure()
    scheduler = StageScheduler(
        runtime, runtime.stages, sequential=runtime.config.startup.sequential
    )
    runtime.services["scheduler"] = scheduler
    scheduler.run()
    return scheduler


def report_startup(runtime: Runtime) -> None:
    """Print the timeline table (stderr) and write the Chrome trace when asked.

    Called after startup, also after a failed one: the timeline shows what ran. The
    table is left out after a failure the user can fix (a missing model, a port in use)
    unless ``--debug``: the CLI's one line says what to change, a table would bury it.
    """
    import sys

    from rt.core.errors import debug_enabled, user_error

    config = runtime.config
    # Callers run this in a `finally` around startup: the exception in flight, if
    # any, is the startup failure.
    failure = sys.exc_info()[1]
    quiet = failure is not None and user_error(failure) is not None and not debug_enabled()
    if config.startup.print_timeline and not quiet:
        print(to_table(runtime.timeline), file=sys.stderr)
    if config.startup.trace:
        write_chrome_trace(runtime.timeline, config.startup.trace)
        print(f"startup trace written to {config.startup.trace}", file=sys.stderr)
