"""The startup scheduler: runs the stage graph with real concurrency.

Each stage runs in its own thread as soon as every stage it needs has finished
(ok or skipped). ``run()`` returns when every non-background stage is done and
sets ``runtime.ready``; background stages may still be running then. With
``sequential=True`` the same graph runs one stage at a time, background stages
included: the baseline the fast path is measured against.

Each hookimpl of a stage is called on its own (through a subset hook caller that
keeps every wrapper), so wrapper hookimpls such as the ``timing`` plugin see one
call per implementation and can time it; ``current_call()`` tells them which.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

import attrs
from rt.core.errors import RtError, StageFailed, traceback_without_message
from rt.core.graph import check_graph
from rt.core.runtime import Runtime
from rt.core.stage import SkipStage, Stage
from rt.core.timeline import reset_current_span, set_current_span

log = logging.getLogger("rt.scheduler")


@attrs.frozen
class HookCall:
    """The stage and plugin of the hookimpl being called right now."""

    stage: str
    plugin: str


_current_call: contextvars.ContextVar[HookCall | None] = contextvars.ContextVar(
    "rt_current_call", default=None
)


def current_call() -> HookCall | None:
    """Inside a stage hook call: which stage and which plugin's hookimpl runs."""
    return _current_call.get()


def _is_wrapper(impl: Any) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


class StageScheduler:
    def __init__(self, runtime: Runtime, stages: list[Stage], *, sequential: bool = False):
        self.runtime = runtime
        self.order = check_graph(stages)
        self.sequential = sequential
        self._state: dict[str, str] = {s.name: "pending" for s in self.order}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._check_implementations()

    # -- checks before anything runs ---------------------------------------

    def _impls(self, stage: Stage) -> list[Any]:
        caller = getattr(self.runtime.pm.hook, stage.hook, None)
        if caller is None or not caller.has_spec():
            raise RtError(
                f"stage {stage.name!r} calls hook {stage.hook!r}, but no hookspec declares it; "
                "a stage that brings its own hook must set Stage(specs=...)"
            )
        return [i for i in reversed(caller.get_hookimpls()) if not _is_wrapper(i)]

    def _check_implementations(self) -> None:
        """A required stage without any implementation fails before startup begins."""
        for stage in self.order:
            if stage.required and not self._impls(stage):
                selected = ", ".join(self.runtime.pm.entries) or "(none)"
                raise RtError(
                    f"stage {stage.name!r} is required, but no selected plugin implements "
                    f"{stage.hook!r} (selected plugins: {selected}); install or select a "
                    "plugin that provides it (`rt plugins` lists them)"
                )

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Run until every non-background stage is done; raise the first failure."""
        foreground = [s.name for s in self.order if self.sequential or not s.background]
        with self._cond:
            self._schedule_locked()
            while self._error is None and not all(
                self._state[n] in ("ok", "skipped") for n in foreground
            ):
                self._cond.wait()
            error = self._error
        if error is not None:
            self.runtime.failed = error
            raise error
        self.runtime.ready.set()

    def wait_background(self, timeout: float | None = None) -> bool:
        """Wait for background stages too; True when every stage has finished."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (
                    self._error is not None
                    or all(
                        v in ("ok", "skipped", "failed", "cancelled") for v in self._state.values()
                    )
                ),
                timeout,
            )

    def abort(self, error: BaseException) -> None:
        """Stop startup with ``error``: nothing new starts and ``run`` raises it."""
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _needs_met(self, stage: Stage) -> bool:
        return all(self._state[n] in ("ok", "skipped") for n in stage.needs)

    def _schedule_locked(self) -> None:
        if self._error is not None:
            return
        for stage in self.order:
            if self.sequential and "running" in self._state.values():
                return
            if self._state[stage.name] == "pending" and self._needs_met(stage):
                self._set_state(stage.name, "running")
                ctx = contextvars.copy_context()
                thread = threading.Thread(
                    target=ctx.run,
                    args=(self._run_stage, stage),
                    name=f"stage:{stage.name}",
                    daemon=True,
                )
                thread.start()

    def _set_state(self, name: str, state: str) -> None:
        self._state[name] = state
        self.runtime.stage_state[name] = state

    def _finish(self, stage: Stage, state: str, error: BaseException | None = None) -> None:
        with self._cond:
            self._set_state(stage.name, state)
            if error is not None and self._error is None:
                self._error = error
                if self.runtime.ready.is_set():
                    log.error("background stage %r failed after startup: %s", stage.name, error)
                for name, value in list(self._state.items()):
                    if value == "pending":
                        self._set_state(name, "cancelled")
                        span = self.runtime.timeline.begin(name, None, kind="stage")
                        self.runtime.timeline.end(
                            span, "skipped", f"not started: {stage.name!r} failed"
                        )
            self._schedule_locked()
            self._cond.notify_all()

    def _run_stage(self, stage: Stage) -> None:
        timeline = self.runtime.timeline
        span = timeline.begin(stage.name, None, kind="stage")
        token = set_current_span(span)
        try:
            result, providers, skips = self._call_impls(stage)
        except StageFailed as e:
            timeline.end(span, "failed", f"{type(e.cause).__name__}: {e.cause}")
            span.plugin = e.plugin
            self._finish(stage, "failed", e)
            return
        except BaseException as e:  # a bug in rt itself: still fail startup cleanly
            timeline.end(span, "failed", f"{type(e).__name__}: {e}")
            self._finish(
                stage, "failed", StageFailed(stage.name, None, e, traceback_without_message(e))
            )
            return
        finally:
            reset_current_span(token)
        span.plugin = ",".join(providers) or None
        if providers:
            self.runtime.results[stage.name] = result
            timeline.end(span, "ok", "; ".join(skips) or None)
            self._finish(stage, "ok")
            return
        reason = "; ".join(skips) or f"no selected plugin implements {stage.hook}"
        if stage.required:
            timeline.end(span, "failed", reason)
            error = RtError(f"required stage {stage.name!r} produced no result: {reason}")
            self._finish(stage, "failed", error)
            return
        timeline.end(span, "skipped", reason)
        self._finish(stage, "skipped")

    def _call_impls(self, stage: Stage) -> tuple[Any, list[str], list[str]]:
        """Call each hookimpl on its own; return (result, providers, skip reasons)."""
        pm = self.runtime.pm
        caller = getattr(pm.hook, stage.hook)
        firstresult = bool(caller.spec.opts.get("firstresult"))
        kwargs = self.runtime.hook_kwargs(tuple(caller.spec.argnames))
        all_impls = caller.get_hookimpls()
        wrapper_plugins = {id(i.plugin) for i in all_impls if _is_wrapper(i)}
        impls = self._impls(stage)
        results: list[Any] = []
        providers: list[str] = []
        skips: list[str] = []
        for impl in impls:
            others = [
                i.plugin for i in impls if i is not impl and id(i.plugin) not in wrapper_plugins
            ]
            single = pm.subset_hook_caller(stage.hook, remove_plugins=others)
            token = _current_call.set(HookCall(stage.name, impl.plugin_name))
            try:
                value = single(**kwargs)
            except SkipStage as e:
                skips.append(f"{impl.plugin_name}: {e.reason}")
                continue
            except Exception as e:
                raise StageFailed(
                    stage.name, impl.plugin_name, e, traceback_without_message(e)
                ) from e
            finally:
                _current_call.reset(token)
            if firstresult:
                if value is not None:
                    return value, [impl.plugin_name], skips
                skips.append(f"{impl.plugin_name}: returned no result")
            else:
                results.extend(value)
                providers.append(impl.plugin_name)
        return (None if firstresult else results), providers, skips
