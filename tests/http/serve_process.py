"""``rt serve`` as a real process, for the fault tests: start it, find its ranks,
stream from it, and check what it leaves behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx

# What a response body must never show a client: a traceback, or a server file path.
INTERNALS = re.compile(r"Traceback|File \"|(?<![\w/.:])(?:/[\w.+@~-]+){2,}\.(?:py|cc|cpp|h)\b")


def wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """False for a process that is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def shm_segments_of(pids: set[int]) -> list[str]:
    """/dev/shm names that carry one of ``pids`` (rt names segments by creator pid)."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return []
    return [n for n in names if any(re.search(rf"(?<!\d){p}(?!\d)", n) for p in pids)]


@attrs.define
class Served:
    proc: subprocess.Popen
    url: str
    log: Path

    def rank_pids(self) -> dict[int, int]:
        """Rank -> pid, from the startup timeline the server publishes: the process that
        ran the rank's load-weights stage (the driver's spans carry rank 0 too)."""
        spans = httpx.get(self.url + "/startup", timeout=10).json()["spans"]
        return {s["rank"]: s["pid"] for s in spans if s["stage"] == "load-weights"}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def rt_serve(
    model: Path, env: dict[str, str], log: Path, *args: str, preexec_fn=None
) -> Iterator[Served]:
    """``rt serve MODEL --port 0 ARGS`` until ready; killed on the way out if still up.
    ``preexec_fn`` runs in the child before ``rt`` starts (``nohup``, ``taskset``)."""
    cmd = [sys.executable, "-m", "rt", "serve", str(model), "--plugins=http", "--port", "0"]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*cmd, *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**env, "OMP_NUM_THREADS": "1"},
            preexec_fn=preexec_fn,
        )
    try:
        wait_for(lambda: "rt: serving on" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        url = log.read_text().split("rt: serving on ", 1)[1].split()[0]
        wait_for(lambda: proc.poll() is not None or httpx.get(url + "/ready").status_code == 200)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield Served(proc, url, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@attrs.define
class Stream:
    """One streaming completion read on a thread: its SSE data lines as they come."""

    url: str
    body: dict
    events: list[str] = attrs.Factory(list)
    status: int | None = None
    first_token: threading.Event = attrs.Factory(threading.Event)
    done: threading.Event = attrs.Factory(threading.Event)
    headers: dict[str, str] = attrs.Factory(dict)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            body = {**self.body, "stream": True}
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=60) as r:
                self.status = r.status_code
                self.headers = dict(r.headers)
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    self.events.append(line[6:])
                    if '"text"' in line and '"text": ""' not in line:
                        self.first_token.set()
        except httpx.HTTPError as e:
            self.events.append(f"<client error {type(e).__name__}>")
        finally:
            self.done.set()

    def errors(self) -> list[dict]:
        out = []
        for event in self.events:
            if event.startswith("{") and '"error"' in event:
                out.append(json.loads(event)["error"])
        return out
