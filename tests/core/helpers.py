"""Small builders shared by the core tests: a runtime over in-process plugins and stages."""

from __future__ import annotations

from collections.abc import Sequence

from rt.core.config import Config, StartupConfig
from rt.core.discovery import Catalog
from rt.core.runtime import Runtime
from rt.core.selection import select
from rt.core.stage import Stage
from rt.core.startup import create_runtime

EMPTY = Catalog(plugins=(), stages=())


def runtime_with(
    plugins: Sequence[tuple[str, object]],
    stages: Sequence[Stage],
    *,
    sequential: bool = False,
    with_timing: bool = True,
) -> Runtime:
    """A runtime whose graph is exactly ``stages``, with ``plugins`` registered
    (plus the built-in ``timing`` plugin, so per-hookimpl spans are recorded)."""
    from rt.plugins import timing

    extra = list(plugins) + ([("timing", timing)] if with_timing else [])
    config = Config(startup=StartupConfig(sequential=sequential, print_timeline=False))
    return create_runtime(config, select(EMPTY, []), extra_plugins=extra, extra_stages=stages)


class LoadedRuntime:
    """A stand-in runtime for a stage hook that only asks for the ``load-weights``
    result (the compile and graph-capture plugins' protocols): ``target`` is it."""

    def __init__(self, target: object) -> None:
        self.target = target

    def result(self, stage: str) -> object:
        assert stage == "load-weights"
        return self.target
