"""Kill worker rank 1 while 8 requests generate at TP=2, and report what followed.

Run as a script in its own process (``python -m tests.engine_e2e.kill_rank MODEL
[PLUGIN | KEY=VALUE | kill=RANK]...``), so a dead rank cannot disturb the test
process; it prints one JSON line. ``KEY=VALUE`` is a config setting; ``kill=0``
kills rank 0 (which needs ``parallel.rank0=process``). Used by the rank-death tests
of the built-in channel, of rank 0's own process and of contrib's shm-broadcast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from rt.core.engine import GenerationRequest
from rt.core.errors import EngineDead
from rt.core.step import SamplingParams

from tests.engine_e2e.engine_helpers import start_runtime


def kill_rank_during_generation(model: str, args: list[str]) -> dict:
    settings = [("parallel.tp", "2")]
    rank = 1
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "kill":
            rank = int(value)
        else:
            settings.append((key, value) if value else ("plugins", arg))
    runtime = start_runtime(model, *settings)
    channel = runtime.results.get("metadata-broadcast")
    engine = runtime.services["engine"]
    pid = runtime.services["workers"].processes[rank].pid
    finals, first, done = [], threading.Event(), threading.Event()

    def collect(out):
        first.set()
        if out.finished:
            finals.append(out)
            if len(finals) == 8:
                done.set()

    params = SamplingParams(temperature=0.0, max_tokens=240, ignore_eos=True)
    for i in range(8):
        engine.submit(
            GenerationRequest(f"r{i}", prompt_token_ids=(1, 2, 3 + i), sampling=params), collect
        )
    first.wait(60)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    finished = done.wait(20)
    elapsed = time.monotonic() - killed_at
    try:
        engine.submit(GenerationRequest("late", prompt_token_ids=(1,), sampling=params), print)
        late = "accepted"
    except EngineDead as e:
        late = str(e)
    shutdown_started = time.monotonic()
    runtime.shutdown()
    shutdown_s = time.monotonic() - shutdown_started
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    return {
        "channel": type(channel).__name__,
        "segment": getattr(channel, "segment", None),
        "finished": finished,
        "elapsed": elapsed,
        "shutdown_s": shutdown_s,
        "late": late,
        "alive": alive,
        "errors": [f.error for f in finals if f.error],
        "reasons": [f.finish_reason for f in finals],
    }


def check_killed_rank_report(report: dict, rank: int) -> None:
    """Every request in flight failed within seconds naming the killed rank and its
    signal, a late request was refused the same way, and no process is left."""
    assert report["finished"], report
    assert report["elapsed"] < 10, "the error arrives within a few seconds"
    assert report["errors"], "requests in flight get an error, not a silent end"
    named = f"rank {rank}"
    assert all(named in e and "SIGKILL" in e for e in report["errors"]), report["errors"]
    assert named in report["late"] and "SIGKILL" in report["late"]
    assert not report["alive"], "no process is left behind"


def run_in_subprocess(model, args: list[str], cwd) -> tuple[int, dict | None, str, int]:
    """(returncode, report, stderr, pid) of the script run in a fresh process."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.engine_e2e.kill_rank", str(model), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    report = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return proc.returncode, report, err, proc.pid


if __name__ == "__main__":
    print(json.dumps(kill_rank_during_generation(sys.argv[1], sys.argv[2:])))
