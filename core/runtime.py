"""The Runtime: everything one process (the driver, or one TP rank) knows at startup."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rt.core.config import Config
from rt.core.errors import RtError
from rt.core.pluginmanager import RtPluginManager
from rt.core.selection import Selection
from rt.core.stage import Stage
from rt.core.timeline import Timeline

log = logging.getLogger("rt")


class Runtime:
    """Passed to every stage hook as ``runtime``.

    ``results`` maps a finished stage's name to what its hook returned (a list for
    collecting hooks); ``ready`` is set once every non-background stage is done;
    ``services`` is where plugins publish objects for other plugins, keyed by a
    name documented in ``rt.core`` (e.g. ``"engine"`` for the :class:`Engine`).
    """

    def __init__(
        self,
        config: Config,
        pm: RtPluginManager,
        selection: Selection,
        stages: list[Stage],
        *,
        rank: int = 0,
        world_size: int | None = None,
        timeline: Timeline | None = None,
        driver: bool | None = None,
    ):
        self.config = config
        self.pm = pm
        self.selection = selection
        self.stages = stages
        self.rank = rank
        self.world_size = config.parallel.tp if world_size is None else world_size
        self.timeline = timeline or Timeline(rank=rank)
        self._driver = rank == 0 if driver is None else driver
        self.results: dict[str, Any] = {}
        self.services: dict[str, Any] = {}
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.stage_state: dict[str, str] = {s.name: "pending" for s in stages}
        self._shutdown_done = False
        self._lock = threading.Lock()

    @property
    def is_driver(self) -> bool:
        """The serving process: rank 0 unless rank 0 runs in a process of its own
        (``parallel.rank0 = "process"``), where that rank's runtime is not the driver."""
        return self._driver

    def result(self, stage: str) -> Any:
        """What ``stage`` returned; an error if it has not finished or was skipped."""
        if stage not in self.results:
            state = self.stage_state.get(stage, "unknown")
            raise RtError(f"result of stage {stage!r} is not available (stage is {state})")
        return self.results[stage]

    def hook_kwargs(self, argnames: tuple[str, ...]) -> dict[str, Any]:
        values = {"config": self.config, "runtime": self}
        missing = [a for a in argnames if a not in values]
        if missing:
            raise RtError(
                f"stage hooks may only take 'config' and 'runtime'; spec asks for {missing}"
            )
        return {a: values[a] for a in argnames}

    def abort_startup(self, error: BaseException) -> None:
        """Fail startup from outside a stage (a worker rank died while a stage waits
        on it). A no-op once startup has finished."""
        scheduler = self.services.get("scheduler")
        if scheduler is not None and not self.ready.is_set():
            scheduler.abort(error)

    def configure(self) -> None:
        self.pm.hook.rt_configure(config=self.config, runtime=self)

    def shutdown(self) -> None:
        """Call ``rt_shutdown`` once; errors are logged, never raised."""
        with self._lock:
            if self._shutdown_done:
                return
            self._shutdown_done = True
        # Each implementation is called on its own, so one that fails does not
        # keep the others from releasing their resources.
        values = {"config": self.config, "runtime": self}
        for impl in reversed(self.pm.hook.rt_shutdown.get_hookimpls()):
            try:
                impl.function(**{a: values[a] for a in impl.argnames})
            except Exception:
                log.exception("rt_shutdown of plugin %r failed", impl.plugin_name)
