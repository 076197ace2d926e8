"""Timeline exports: a human table, plain JSON, and Chrome-trace JSON for Perfetto."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rt.core.timeline import Span, Timeline

_BAR_WIDTH = 30


def _bar(span: Span, t0: float, total: float) -> str:
    """An ASCII Gantt bar so overlap is visible in a terminal."""
    if total <= 0:
        return ""
    end = span.end if span.end is not None else time.time()
    a = int((span.start - t0) / total * _BAR_WIDTH)
    b = max(a + 1, int((end - t0) / total * _BAR_WIDTH))
    return " " * a + "#" * (b - a)


_NOTE_WIDTH = 60


def _notes_text(span: Span) -> str:
    # A failure's reason may hold a traceback: the table shows its first line.
    parts = [span.reason.splitlines()[0]] if span.reason else []
    for key, value in span.notes.items():
        text = str(len(value)) if isinstance(value, list | tuple) else str(value)
        parts.append(f"{key}={text[:_NOTE_WIDTH]}")
    return "; ".join(str(p) for p in parts)


def to_table(timeline: Timeline, include_hooks: bool = True) -> str:
    """Render the spans as a fixed-width table, times in seconds since launch."""
    spans = [s for s in timeline.spans() if include_hooks or s.kind == "stage"]
    if not spans:
        return "(no startup spans recorded)"
    t0 = timeline.origin
    last = max((s.end or time.time()) for s in spans)
    total = last - t0
    header = ("stage", "plugin", "rank", "start", "dur", "outcome", "timeline", "notes")
    rows: list[tuple[str, ...]] = []
    for s in spans:
        name = s.stage if s.kind == "stage" else f"  {s.stage}"
        dur = f"{s.duration:.3f}" if s.duration is not None else "..."
        rows.append(
            (
                name,
                s.plugin or "-",
                str(s.rank),
                f"{s.start - t0:.3f}",
                dur,
                s.outcome,
                _bar(s, t0, total),
                _notes_text(s),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [r[i].ljust(widths[i]) for i in range(len(widths))] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    lines.append(f"total {total:.3f}s since launch")
    return "\n".join(lines)


def to_json(timeline: Timeline) -> dict[str, Any]:
    """Plain JSON: origin plus every span with times relative to launch."""
    t0 = timeline.origin
    out = []
    for s in timeline.spans():
        d = s.to_dict()
        d["start_s"] = round(s.start - t0, 6)
        d["end_s"] = None if s.end is None else round(s.end - t0, 6)
        d["duration_s"] = None if s.duration is None else round(s.duration, 6)
        d["notes"] = {k: _jsonable(v) for k, v in s.notes.items()}
        out.append(d)
    return {"origin": t0, "spans": out}


def to_chrome_trace(timeline: Timeline) -> dict[str, Any]:
    """Chrome trace format: complete ("X") events, microseconds; Perfetto opens it."""
    t0 = timeline.origin
    now = time.time()
    events: list[dict[str, Any]] = []
    seen_pids: dict[int, int] = {}
    threads: dict[tuple[int, str], int] = {}
    for s in timeline.spans():
        seen_pids.setdefault(s.pid, s.rank)
        tid = threads.setdefault((s.pid, s.thread), len(threads) + 1)
        end = s.end if s.end is not None else now
        events.append(
            {
                "name": s.stage,
                "cat": s.kind,
                "ph": "X",
                "ts": round((s.start - t0) * 1e6, 3),
                "dur": round((end - s.start) * 1e6, 3),
                "pid": s.pid,
                "tid": tid,
                "args": {
                    "plugin": s.plugin,
                    "rank": s.rank,
                    "outcome": s.outcome,
                    "reason": s.reason,
                    "notes": {k: _jsonable(v) for k, v in s.notes.items()},
                },
            }
        )
    # The trace is written by the driver. Its spans carry rank 0; so do those of rank 0's
    # own process when parallel.rank0 = "process".
    driver = os.getpid()
    rank0_elsewhere = any(r == 0 and pid != driver for pid, r in seen_pids.items())
    for pid, rank in seen_pids.items():
        if pid == driver:
            label = "driver" if rank0_elsewhere else "driver (rank 0)"
        else:
            label = f"rank {rank}"
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": label}})
    for (pid, thread), tid in threads.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": thread}}
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(timeline: Timeline, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_chrome_trace(timeline), f)


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
