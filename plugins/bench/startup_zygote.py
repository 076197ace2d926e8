"""The zygote beside ``rt bench startup --zygote``.

Started before the timed rounds through the ``rt zygote`` command (the bench plugin
does not import the zygote plugin), with the invocation's profile, plugins and
settings; a zygote already running and current is used as it is. Its resident memory
is read after the start and after the runs, and it is stopped at the end unless it was
running before. Each variant's server is told through its environment whether it may
ask it (``Variant.server_env``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rt.core import RtError

TIMEOUT_S = 600


def _zygote(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rt", "zygote", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def zygote_status() -> dict[str, Any] | None:
    """``rt zygote status --json`` when a zygote answers, else None."""
    out = _zygote("status", "--json")
    try:
        data = json.loads(out.stdout)
    except ValueError:
        return None
    return data if data.get("running") else None


class BenchZygote:
    """Start (or reuse) the zygote; :meth:`summary` after :meth:`finish`."""

    def __init__(self, options: list[str]) -> None:
        before = zygote_status()
        self.was_running = before is not None and before.get("stale") is None
        out = _zygote("start", *options)
        if out.returncode != 0:
            raise RtError(f"rt zygote start failed: {(out.stderr or out.stdout).strip()[-800:]}")
        self.started = zygote_status()
        if self.started is None:
            raise RtError(f"rt zygote start said {out.stdout.strip()!r}, but no zygote answers")
        self.finished: dict[str, Any] | None = None

    def finish(self) -> None:
        self.finished = zygote_status()
        if not self.was_running:
            _zygote("stop")

    def summary(self) -> dict[str, Any]:
        s = self.started or {}
        return {
            "pid": s.get("pid"),
            "torch": s.get("torch"),
            "import_s": s.get("import_s"),
            "rss_bytes": s.get("rss_bytes"),
            "rss_after_runs_bytes": (self.finished or {}).get("rss_bytes"),
            "forks": (self.finished or {}).get("forks"),
            "commands": (self.finished or {}).get("commands"),
            "started_by_bench": not self.was_running,
        }


@contextmanager
def server_env(settings: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``settings`` for one start (the server inherits it)."""
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe(z: dict[str, Any]) -> str:
    def mib(n: int | None) -> str:
        return "-" if n is None else f"{n / 2**20:.0f} MiB"

    origin = "started for this run" if z["started_by_bench"] else "already running"
    return (
        f"zygote pid {z['pid']} ({origin}): resident memory {mib(z['rss_bytes'])} after its "
        f"start, {mib(z['rss_after_runs_bytes'])} after the runs; imported torch "
        f"{z['torch']} in {z['import_s']} s; forked {z['forks']} processes "
        f"({z.get('commands') or 0} of them commands' drivers)"
    )
