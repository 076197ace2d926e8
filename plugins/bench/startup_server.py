"""One timed start of ``rt serve`` for ``rt bench startup``; the floor.

``serve_once`` launches the server on a free loopback port, polls ``/health`` and
``/ready``, sends one 16-token completion (launch to its answer is the figure), then,
untimed against launch, measures what ``startup_once_up`` does (decode tokens/s, a
background compile's switch, the compile stage's seconds, the stage timeline), and
stops the server with SIGTERM whatever happened. ``evict`` and ``read_back`` make a
run cold or warm.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rt.core import RtError
from rt.plugins.bench.startup_once_up import TIMEOUT_S, get, once_up, post

POLL_S = 0.005


def _wait_for(port: int, path: str, proc: subprocess.Popen, start: float) -> float:
    while time.perf_counter() - start < TIMEOUT_S:
        if proc.poll() is not None:
            raise RtError(f"rt serve exited with code {proc.returncode} before {path} answered 200")
        try:
            if get(port, path, timeout=1.0)[0] == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(POLL_S)
    raise RtError(f"{path} did not answer 200 within {TIMEOUT_S}s")


def evict(paths: list[Path]) -> list[str]:
    """Drop the files' clean pages from the page cache; returns what could not be evicted."""
    problems = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError) as e:
            problems.append(f"{path}: {e}")
    return problems


def read_back(files: list[Path]) -> None:
    """Read files (untimed), so the page cache holds them whole for a warm run."""
    from rt.core.pagecache import READ_CHUNK, read_uncached

    buffer = memoryview(bytearray(READ_CHUNK))
    for path in files:
        read_uncached(path, buffer)


def serve_once(
    model: str | None,
    tp: int,
    extra: list[str],
    cold_files: list[Path] | None,
    decode_tokens: int = 0,
    switch_timeout: float | None = None,
) -> dict[str, Any]:
    evicted = None
    if cold_files is not None:
        problems = evict(cold_files)
        evicted = "all" if not problems else f"failed for {len(problems)} files: {problems[0]}"
    from rt.core.host import free_port

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "rt",
        "serve",
        *([model] if model else []),
        "--port",
        str(port),
        "--tp",
        str(tp),
        "--set",
        "startup.print_timeline=false",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        health = _wait_for(port, "/health", proc, start)
        ready = _wait_for(port, "/ready", proc, start)
        status, body = post(
            port,
            "/v1/completions",
            {
                "model": json.loads(get(port, "/v1/models")[1])["data"][0]["id"],
                "prompt": "The capital of France is",
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        first = time.perf_counter() - start
        if status != 200:
            raise RtError(f"the first completion failed with HTTP {status}: {body[:500]!r}")
        up = once_up(port, proc, start, decode_tokens, switch_timeout)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = ""
    return {
        "health_s": round(health, 4),
        "ready_s": round(ready, 4),
        "first_completion_s": round(first, 4),
        **up,
        "exit_code": proc.returncode,
        "evicted": evicted,
        "stderr_tail": err[-500:] if proc.returncode else "",
    }


def floor_once() -> dict[str, Any]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return {"first_completion_s": round(time.perf_counter() - start, 4)}
