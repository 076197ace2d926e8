"""A worker rank that dies mid-generation fails requests fast, naming the rank."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from rt.core.engine import GenerationRequest
    from rt.core.errors import EngineDead
    from rt.core.step import SamplingParams
    from tests.engine_e2e.engine_helpers import start_runtime

    runtime = start_runtime(sys.argv[1], ("parallel.tp", "2"))
    engine = runtime.services["engine"]
    pid = runtime.services["workers"].processes[1].pid
    finals, first, done = [], threading.Event(), threading.Event()

    def collect(out):
        first.set()
        if out.finished:
            finals.append(out)
            if len(finals) == 8:
                done.set()

    params = SamplingParams(temperature=0.0, max_tokens=240, ignore_eos=True)
    for i in range(8):
        engine.submit(GenerationRequest(f"r{i}", prompt_token_ids=(1, 2, 3 + i), sampling=params), collect)
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
    runtime.shutdown()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    print(json.dumps({
        "finished": finished, "elapsed": elapsed, "late": late, "alive": alive,
        "errors": [f.error for f in finals if f.error], "reasons": [f.finish_reason for f in finals],
    }))
    """
)


def test_killed_rank_fails_requests_naming_it(tiny_llama):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_llama)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["finished"], report
    assert report["elapsed"] < 10, "the error arrives within a few seconds"
    assert report["errors"], "requests in flight get an error, not a silent end"
    assert all("rank 1" in e and "SIGKILL" in e for e in report["errors"]), report["errors"]
    assert "rank 1" in report["late"] and "SIGKILL" in report["late"]
    assert not report["alive"], "no process is left behind"
