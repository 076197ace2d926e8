"""``GET /startup?format=html``: a self-contained Gantt chart of the startup timeline.

Server-rendered SVG with inline CSS (no script, no CDN), so it renders anywhere,
including headless Chromium for the docs screenshot. While startup runs the page
reloads itself every second.
"""

from __future__ import annotations

import html
import os
import time
from typing import Any

from rt.core.timeline import Span
from rt.plugins.http.public import public_message, redact_paths

_LABEL_W = 300
_CHART_W = 680
_DUR_W = 120
_ROW_H = 22
_AXIS_H = 28
_COLORS = {"ok": "#3b82f6", "running": "#f59e0b", "skipped": "#9ca3af", "failed": "#ef4444"}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 20px; margin: 0 0 4px; }
.status { margin: 0 0 16px; color: #374151; }
.status b.ready { color: #059669; } .status b.failed { color: #dc2626; }
.status b.starting { color: #d97706; }
svg text { font: 12px system-ui, sans-serif; fill: #111827; }
svg text.hook { fill: #4b5563; } svg text.axis { fill: #6b7280; font-size: 11px; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
"""


def _rows(spans: list[Span]) -> list[tuple[Span, int]]:
    """Stage spans in start order, each followed by its hookimpl/task spans (depth 1)."""
    stages = [s for s in spans if s.kind == "stage"]
    children: dict[int, list[Span]] = {id(s): [] for s in stages}
    for s in spans:
        if s.kind == "stage":
            continue
        same = [st for st in stages if st.stage == s.stage and st.rank == s.rank]
        # Its stage span began before it, except for work started at CLI entry
        # (preload's early imports and forkserver), which the stage only records.
        started = [st for st in same if st.start <= s.start + 1e-6]
        owner = started[-1] if started else (same[0] if same else None)
        if owner is not None:
            children[id(owner)].append(s)
    rows: list[tuple[Span, int]] = []
    for st in stages:
        rows.append((st, 0))
        rows += [(c, 1) for c in children[id(st)]]
    return rows


def _label(span: Span, depth: int) -> str:
    if depth == 0:
        # The page is drawn by the driver: another process's span is a rank's (rank 0's
        # too, when it runs in a process of its own).
        elsewhere = span.rank or span.pid != os.getpid()
        return span.stage + (f" (rank {span.rank})" if elsewhere else "")
    kind = "task" if span.kind == "task" else "hook"
    return f"{span.plugin or '?'} ({kind})"


def _tooltip(span: Span, t0: float, now: float) -> str:
    end = span.end if span.end is not None else now
    parts = [
        f"{span.stage} / {span.plugin or '-'} / rank {span.rank}",
        f"{span.outcome}: {span.start - t0:.3f}s .. {end - t0:.3f}s ({end - span.start:.3f}s)",
    ]
    if span.reason:
        parts.append(span.reason)
    parts += [f"{k}={v}" for k, v in span.notes.items()]
    return redact_paths("\n".join(parts))


def _status(runtime: Any, now: float, t0: float) -> tuple[str, str]:
    if runtime.failed is not None:
        cause = getattr(runtime.failed, "cause", runtime.failed)
        stage = getattr(runtime.failed, "stage", None)
        where = f" in stage {stage}" if stage else ""
        return "failed", public_message(f"startup failed{where}: {type(cause).__name__}: {cause}")
    if runtime.ready.is_set():
        return "ready", "ready"
    running = sorted(n for n, v in runtime.stage_state.items() if v == "running")
    return "starting", f"starting ({now - t0:.1f}s), running: {', '.join(running) or '-'}"


def render(runtime: Any) -> str:
    timeline = runtime.timeline
    spans = timeline.spans()
    now = time.time()
    t0 = timeline.origin
    last = max([now if s.end is None else s.end for s in spans] + [t0 + 0.001])
    total = last - t0
    rows = _rows(spans)
    state, status = _status(runtime, now, t0)

    def x(t: float) -> float:
        return _LABEL_W + (t - t0) / total * _CHART_W

    height = _AXIS_H + len(rows) * _ROW_H + 8
    width = _LABEL_W + _CHART_W + _DUR_W
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    step = _tick_step(total)
    tick = 0.0
    while tick <= total + 1e-9:
        tx = x(t0 + tick)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{_AXIS_H - 6}" x2="{tx:.1f}" y2="{height}" stroke="#e5e7eb"/>'
            f'<text class="axis" x="{tx:.1f}" y="{_AXIS_H - 10}" text-anchor="middle">'
            f"{tick:g}s</text>"
        )
        tick += step
    for i, (span, depth) in enumerate(rows):
        y = _AXIS_H + i * _ROW_H
        end = span.end if span.end is not None else now
        bx, bw = x(span.start), max(x(end) - x(span.start), 2.0)
        bar_h = 14 if depth == 0 else 8
        by = y + (_ROW_H - bar_h) / 2
        color = _COLORS.get(span.outcome, "#6b7280")
        opacity = "1" if depth == 0 else "0.6"
        cls = ' class="hook"' if depth else ""
        dur = f"{end - span.start:.3f}s" + ("…" if span.end is None else "")
        parts.append(
            f"<g><title>{html.escape(_tooltip(span, t0, now))}</title>"
            f'<text{cls} x="{8 + depth * 18}" y="{y + 15}">{html.escape(_label(span, depth))}</text>'
            f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw:.1f}" height="{bar_h}" rx="2" '
            f'fill="{color}" fill-opacity="{opacity}"/>'
            f'<text{cls} x="{_LABEL_W + _CHART_W + 8}" y="{y + 15}">{dur} {span.outcome}</text></g>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{c}"></i>{name}</span>' for name, c in _COLORS.items()
    )
    refresh = '<meta http-equiv="refresh" content="1">' if state == "starting" else ""
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>rt startup: {state}</title>{refresh}<style>{_CSS}</style></head><body>"
        f"<h1>rt startup</h1>"
        f'<p class="status">status: <b class="{state}">{html.escape(status)}</b> · '
        f"{len([r for r in rows if r[1] == 0])} stages · {total:.3f}s since launch</p>"
        f'<p class="legend">{legend}</p>{"".join(parts)}</body></html>'
    )


def _tick_step(total: float) -> float:
    for step in (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300):
        if total / step <= 12:
            return step
    return 600.0
