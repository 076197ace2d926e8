"""The startup timeline: one span per stage run and per hookimpl call.

Spans carry wall-clock times (``time.time()``), so spans recorded by different
processes (the TP ranks) merge into one timeline. ``origin`` is the moment the
user launched the process, which the exports use as time zero.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import attrs

Outcome = Literal["running", "ok", "skipped", "failed"]
Kind = Literal["stage", "hook", "task"]

_current_span: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "rt_current_span", default=None
)


@attrs.define
class Span:
    """One timed piece of startup. ``kind``: a whole ``stage``, one ``hook``impl
    call within it, or a background ``task`` a hookimpl started."""

    stage: str
    plugin: str | None
    rank: int
    pid: int
    thread: str
    start: float
    end: float | None = None
    outcome: Outcome = "running"
    kind: Kind = "stage"
    reason: str | None = None
    notes: dict[str, object] = attrs.field(factory=dict)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Span:
        return cls(**data)  # type: ignore[arg-type]


_launched_at: float | None = None


def set_launch_time(when: float) -> None:
    """Make ``when`` (wall clock) this process's launch time: a process that runs a
    command handed to it by another (a driver forked from the zygote) times its
    startup from the moment the user launched that other process."""
    global _launched_at
    _launched_at = when


def process_start_time(pid: int | None = None) -> float:
    """When this process (or process ``pid``) was launched (wall clock), from /proc
    where available."""
    if pid is None and _launched_at is not None:
        return _launched_at
    try:
        with open(f"/proc/{pid or 'self'}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: starttime in clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        boot = time.time() - uptime
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class Timeline:
    """A thread-safe list of spans. Stages and plugins add spans and notes to it."""

    def __init__(self, rank: int = 0, origin: float | None = None):
        self.rank = rank
        self.origin = process_start_time() if origin is None else origin
        self._spans: list[Span] = []
        self._lock = threading.Lock()

    def begin(self, stage: str, plugin: str | None, kind: Kind = "stage") -> Span:
        span = Span(
            stage=stage,
            plugin=plugin,
            rank=self.rank,
            pid=os.getpid(),
            thread=threading.current_thread().name,
            start=time.time(),
            kind=kind,
        )
        with self._lock:
            self._spans.append(span)
        return span

    def end(self, span: Span, outcome: Outcome, reason: str | None = None) -> None:
        """Close ``span`` now, unless its block already set when it ended (work that
        finished before it was recorded, as preload's CLI-entry work does)."""
        with self._lock:
            if span.end is None:
                span.end = time.time()
            span.outcome = outcome
            span.reason = reason

    @contextmanager
    def span(self, stage: str, plugin: str | None, kind: Kind = "task") -> Iterator[Span]:
        """Time a block as a span; exceptions mark it failed and propagate.

        Example: ``with runtime.timeline.span("preload", "preload", kind="task"): ...``
        """
        from rt.core.stage import SkipStage

        span = self.begin(stage, plugin, kind)
        token = _current_span.set(span)
        try:
            yield span
        except SkipStage as e:
            self.end(span, "skipped", e.reason)
            raise
        except BaseException as e:
            self.end(span, "failed", f"{type(e).__name__}: {e}")
            raise
        else:
            self.end(span, "ok")
        finally:
            _current_span.reset(token)

    def add(self, spans: list[Span]) -> None:
        """Merge spans recorded elsewhere (another rank's timeline)."""
        with self._lock:
            self._spans.extend(spans)

    def spans(self) -> list[Span]:
        with self._lock:
            return sorted((attrs.evolve(s) for s in self._spans), key=lambda s: s.start)

    def stage_spans(self) -> list[Span]:
        return [s for s in self.spans() if s.kind == "stage"]


def note(key: str, value: object) -> None:
    """Attach a note to the span the calling code runs in (a no-op outside one).

    Example, inside a hookimpl: ``note("bytes", 538_000_000)``.
    """
    span = _current_span.get()
    if span is not None:
        span.notes[key] = value


def current_span() -> Span | None:
    return _current_span.get()


def set_current_span(span: Span | None) -> contextvars.Token:
    return _current_span.set(span)


def reset_current_span(token: contextvars.Token) -> None:
    _current_span.reset(token)
