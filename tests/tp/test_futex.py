"""Futexes on a shared mapping (plugins/tp/futex.py): a changed word returns at once,
an unchanged one times out, and a wake from another process ends the wait."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import struct
import time

import pytest
from rt.plugins.tp.futex import Futexes, unsupported

pytestmark = pytest.mark.skipif(unsupported() is not None, reason=str(unsupported()))


def _mapping(path) -> mmap.mmap:
    with open(path, "w+b") as f:
        f.truncate(4096)
        return mmap.mmap(f.fileno(), 4096)


def test_a_changed_word_returns_at_once_and_an_unchanged_one_times_out(tmp_path):
    mm = _mapping(tmp_path / "words")
    futexes = Futexes(mm)
    struct.pack_into("<Q", mm, 8, 5)
    start = time.monotonic()
    assert futexes.wait(8, 4, timeout_s=10.0) is True  # the word holds 5, not 4
    assert time.monotonic() - start < 5.0
    start = time.monotonic()
    assert futexes.wait(8, 5, timeout_s=0.05) is False
    assert time.monotonic() - start >= 0.04


def _waiter(path: str, ready, out) -> None:
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    futexes = Futexes(mm)
    ready.set()
    woken = futexes.wait(64, 0, timeout_s=30.0)
    out.put((woken, struct.unpack_from("<Q", mm, 64)[0]))


def test_a_wake_from_another_process_ends_the_wait(tmp_path):
    mm = _mapping(tmp_path / "words")
    futexes = Futexes(mm)
    ctx = mp.get_context("fork")
    ready, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_waiter, args=(str(tmp_path / "words"), ready, out))
    child.start()
    try:
        assert ready.wait(30)
        time.sleep(0.2)  # let it fall asleep in the kernel
        struct.pack_into("<Q", mm, 64, 1)
        futexes.wake(64)
        woken, seen = out.get(timeout=20)
        assert woken is True, "the waiter timed out instead of being woken"
        assert seen == 1
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
