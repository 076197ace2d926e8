"""Starting a TP group's rank processes together (``workers.start_all``)."""

from __future__ import annotations

import threading
import time

import pytest
from rt.core.timeline import Timeline, note
from rt.plugins.tp.workers import start_all


class _Process:
    """Stands in for a multiprocessing Process: what start_all calls and reads."""

    def __init__(
        self,
        name: str,
        fail: bool = False,
        delay: float = 0.0,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.name, self.fail, self.delay, self.barrier = name, fail, delay, barrier
        self.started_by: str | None = None
        self.done = threading.Event()

    def start(self) -> None:
        time.sleep(self.delay)
        if self.barrier is not None:
            self.barrier.wait()  # returns only once every start is under way
        self.started_by = threading.current_thread().name
        note(f"started {self.name}", True)  # as the zygote client notes ranks_from
        self.done.set()
        if self.fail:
            raise OSError(f"{self.name}: no fork")


def test_several_start_at_once_and_note_on_the_callers_span():
    # one after the other, the first start would wait at the barrier until it broke
    barrier = threading.Barrier(3, timeout=30)
    procs = [_Process(f"rt-rank-{i}", barrier=barrier) for i in range(3)]
    timeline = Timeline()
    with timeline.span("workers", "tp") as span:
        start_all(procs)
    assert all(p.done.is_set() for p in procs)
    assert {p.started_by for p in procs} == {f"start-rt-rank-{i}" for i in range(3)}
    assert all(span.notes.get(f"started rt-rank-{i}") for i in range(3)), span.notes


def test_one_process_starts_on_the_calling_thread():
    proc = _Process("rt-rank-0")
    start_all([proc])
    assert proc.started_by == threading.current_thread().name


def test_a_failed_start_is_raised_after_every_start_returned():
    slow = _Process("rt-rank-2", delay=0.3)
    procs = [_Process("rt-rank-0"), _Process("rt-rank-1", fail=True), slow]
    with pytest.raises(OSError, match="rt-rank-1: no fork"):
        start_all(procs)
    assert slow.done.is_set()  # no start is left running behind the error
