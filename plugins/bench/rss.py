"""Server memory over time for ``rt bench serve``: RSS of a process tree, sampled.

``rt serve`` may run ranks in child processes (a forkserver, rank 0 in its own
process), so a leak can sit in any of them: each sample sums ``VmRSS`` over the
server's pid and every descendant. Pages shared between forked processes count in
each, which overstates the level but not the change, and the change is what a
load test asks about.
"""

from __future__ import annotations

import os
import threading
import time

import attrs
from rt.core.host import proc_bytes

SAMPLE_EVERY_S = 1.0


@attrs.frozen
class RssSample:
    t_s: float  # seconds since the sampler started
    rss_bytes: int  # summed over the tree
    processes: int


def _children(pid: int) -> list[int]:
    """Direct children, from every thread's ``children`` list (Linux 3.5+)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass  # the thread ended between the listing and the read
    return out


def _rss(pid: int) -> int:
    return proc_bytes(f"/proc/{pid}/status", "VmRSS")  # 0 once the process ended


def tree_rss(pid: int) -> tuple[int, int]:
    """(summed RSS in bytes, processes counted) of ``pid`` and its descendants."""
    total, seen, todo = 0, set(), [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        todo += _children(p)
    return total, len(seen)


class RssSampler:
    """Samples ``tree_rss(pid)`` every ``every_s`` on a thread of its own, so a busy
    event loop in the load generator cannot delay or skip samples."""

    def __init__(self, pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            rss, n = tree_rss(self.pid)
            self.samples.append(RssSample(round(time.monotonic() - self._start, 3), rss, n))
            if self._stop.wait(self.every_s):
                return


def summarize(
    samples: list[RssSample], warmup_s: float, end_s: float, window_s: float = 30.0
) -> dict[str, object]:
    """The mean RSS in the first ``window_s`` after warm-up and in the last ``window_s``
    before ``end_s``, and the change in %. Short runs shrink the windows to half of what
    follows the warm-up, so the two never overlap."""
    window = min(window_s, (end_s - warmup_s) / 2)
    out: dict[str, object] = {
        "rss_samples": len(samples),
        "rss_curve_mib": curve(samples),
        "rss_peak_bytes": max((s.rss_bytes for s in samples), default=None),
        "rss_processes": max((s.processes for s in samples), default=None),
        "rss_warmup_s": round(warmup_s, 1),
        "rss_window_s": round(window, 1) if window > 0 else None,
        "rss_first_mean_bytes": None,
        "rss_last_mean_bytes": None,
        "rss_change_pct": None,
    }
    if window <= 0:
        return out
    first = [s.rss_bytes for s in samples if warmup_s <= s.t_s <= warmup_s + window]
    last = [s.rss_bytes for s in samples if end_s - window <= s.t_s <= end_s]
    if first and last:
        a, b = sum(first) / len(first), sum(last) / len(last)
        out["rss_first_mean_bytes"] = round(a)
        out["rss_last_mean_bytes"] = round(b)
        out["rss_change_pct"] = round((b - a) / a * 100, 2) if a else None
    return out


def curve(samples: list[RssSample], points: int = 24) -> list[tuple[float, float]]:
    """At most ``points`` evenly spaced (seconds, MiB) samples: the shape of the run, to
    tell a level that settles from one that keeps climbing."""
    step = max(1, -(-len(samples) // points))  # ceiling division
    return [(s.t_s, round(s.rss_bytes / 2**20, 1)) for s in samples[::step]]
