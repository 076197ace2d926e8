"""Built-in plugin ``timing``: one timeline span per stage hookimpl call.

It registers, per runtime, a wrapper hookimpl for every stage hook of the graph
(third-party stage hooks included), so timing is one mechanism and not code in
every stage. Block it with ``--plugins=no:timing`` to keep only per-stage spans.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

from rt.core import hookimpl

if TYPE_CHECKING:
    from rt.core.timeline import Timeline


class StageTimer:
    """Holds one ``wrapper=True`` hookimpl per stage hook name."""

    def __init__(self, timeline: Timeline, hooks: Iterable[str]):
        for hook in hooks:
            setattr(self, hook, _timing_wrapper(timeline))


def _timing_wrapper(timeline: Timeline) -> Callable[[], Generator[None, Any, Any]]:
    # Here, not at module level: the scheduler is not needed before rt_cli_start.
    from rt.core.scheduler import current_call

    @hookimpl(wrapper=True)
    def wrapper() -> Generator[None, Any, Any]:
        call = current_call()
        if call is None:  # called outside the stage scheduler: nothing to attribute
            return (yield)
        with timeline.span(call.stage, call.plugin, kind="hook"):
            return (yield)

    return wrapper


@hookimpl
def rt_configure(runtime: Any) -> None:
    hooks = [stage.hook for stage in runtime.stages]
    runtime.pm.register(StageTimer(runtime.timeline, hooks), name="timing.wrappers")
