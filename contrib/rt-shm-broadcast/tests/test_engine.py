"""The engine with ``--plugins=shm-broadcast`` at TP=2: the same tokens as with the
built-in channel, and a killed worker rank is reported fast with no segment left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tests.conftest import REPO, run_rt
from tests.serving_models import write_servable_model

from rt_shm_broadcast.ring import SHM_DIR

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_servable_model(tmp_path_factory.mktemp("tiny-llama"), "llama_gqa_tied", seed=1)


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(f"rt-shm-{pid}-")]


def test_generate_is_token_identical_with_each_channel(tiny_llama):
    outputs = {}
    for plugins in ([], ["--plugins=shm-broadcast"]):
        result = run_rt(
            "generate", str(tiny_llama), PROMPT, "--max-tokens", "24", "--json", "--tp", "2",
            *plugins,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[tuple(plugins)] = json.loads(result.stdout)["token_ids"]
        channel = "shm-broadcast" if plugins else "object-list"
        assert f"metadata-broadcast  {channel}" in result.stderr, "the timeline names the channel"
    assert outputs[()] == outputs[("--plugins=shm-broadcast",)]
    assert len(outputs[()]) == 24


KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from rt.core.discovery import discover
    from rt.core.engine import GenerationRequest
    from rt.core.profile_registry import load_config
    from rt.core.selection import select
    from rt.core.startup import create_runtime, run_startup
    from rt.core.step import SamplingParams

    cli = [("model.source", sys.argv[1], "t"), ("parallel.tp", "2", "t"),
           ("startup.print_timeline", "false", "t")]
    runtime = create_runtime(load_config(environ={}, cli=cli),
                             select(discover(), ["shm-broadcast"]), exclude=["frontend"])
    run_startup(runtime)
    channel = runtime.results["metadata-broadcast"]
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
    t0 = time.monotonic()
    runtime.shutdown()
    print(json.dumps({
        "channel": type(channel).__name__, "segment": channel.segment,
        "finished": finished, "elapsed": elapsed, "shutdown_s": time.monotonic() - t0,
        "errors": [f.error for f in finals if f.error],
    }))
    """
)


def test_killed_rank_is_reported_fast_and_leaves_no_segment(tiny_llama):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_llama)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["channel"] == "ShmBroadcastChannel"
    assert report["segment"].startswith(f"rt-shm-{proc.pid}-")
    assert report["finished"] and report["elapsed"] < 10, report
    assert report["errors"] and all("rank 1" in e and "SIGKILL" in e for e in report["errors"])
    assert report["shutdown_s"] < 15, report
    assert _segments(proc.pid) == [], "the driver's segment is removed"
