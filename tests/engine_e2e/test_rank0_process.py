"""``parallel.rank0 = "process"``: rank 0 runs in a worker process of its own and the
driver never imports torch; tokens, timeline and failures are what they are with rank
0 in the driver."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from rt.core.engine import GenerationRequest, generate_blocking
from rt.core.step import SamplingParams

from tests.conftest import REPO, run_rt
from tests.engine_e2e.engine_helpers import start_runtime
from tests.engine_e2e.kill_rank import check_killed_rank_report, run_in_subprocess
from tests.engine_e2e.test_generate_cli import PROMPT, _reference


@pytest.mark.parametrize("tp", [1, 2])
def test_driver_never_imports_torch_and_tokens_match_transformers(tiny_llama, tp):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.engine_e2e.rank0_process", str(tiny_llama), PROMPT,
         "--max-tokens", "16", "--json", "--tp", str(tp)],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report == {"code": 0, "torch": False}, proc.stderr[-3000:]
    out = json.loads("\n".join(lines[:-1]))
    assert out["token_ids"] == _reference(tiny_llama, PROMPT, 16)
    # rank 0's stages are in the printed timeline; the driver's preload skipped torch
    assert "rank0=own process" in proc.stderr
    assert "torch=not imported: rank 0 runs in its own process" in proc.stderr
    # the ranks' forkserver was forked from the CLI at its entry (forked_forkserver.py)
    assert "server=forked" in proc.stderr


def _greedy(runtime, n=12):
    request = GenerationRequest(
        "r", prompt_token_ids=(1, 2, 3, 4), sampling=SamplingParams(temperature=0, max_tokens=n)
    )
    return generate_blocking(runtime.services["engine"], request, timeout=60).token_ids


def test_same_tokens_and_rank0_spans_as_with_rank0_in_the_driver(tiny_llama):
    runtime = start_runtime(tiny_llama, ("parallel.rank0", "driver"))
    try:
        expected = _greedy(runtime)
    finally:
        runtime.shutdown()
    runtime = start_runtime(tiny_llama, ("parallel.rank0", "process"))
    try:
        assert _greedy(runtime) == expected
        rank0 = runtime.services["workers"].processes[0]
        spans = runtime.timeline.spans()
        loaded = [s for s in spans if s.stage == "load-weights" and s.kind == "stage"]
        assert [(s.rank, s.pid, s.outcome) for s in loaded] == [(0, rank0.pid, "ok")]
        assert "load-weights" not in runtime.results, "the driver loads no weights"
        forkserver = next(s for s in spans if s.plugin == "preload-forkserver" and s.kind == "hook")
        assert forkserver.outcome == "ok", "rank 0 is forked from the forkserver"
    finally:
        runtime.shutdown()
    assert not rank0.is_alive(), "shutdown stops rank 0"


def test_killed_rank0_fails_requests_naming_it(tiny_llama):
    settings = ["parallel.rank0=process", "kill=0"]
    returncode, report, stderr, _ = run_in_subprocess(tiny_llama, settings, REPO)
    assert returncode == 0, stderr[-3000:]
    check_killed_rank_report(report, rank=0)


def test_rank0_failing_a_stage_fails_startup_naming_rank_stage_and_cause(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = run_rt(
        "generate", str(broken), PROMPT, "--max-tokens", "4", "--set", "parallel.rank0=process"
    )
    assert result.returncode == 1
    # A bad checkpoint is the user's to fix: one line, also from rank 0's own process.
    assert result.stderr.startswith("rt: error:"), result.stderr[-3000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
    assert "rank 0, stage 'load-weights'" in result.stderr
    assert "model.safetensors is truncated" in result.stderr


@pytest.mark.gpu
def test_on_cuda_rank0_in_its_own_process_gives_the_same_tokens(tiny_llama):
    tokens = {}
    for rank0 in ("driver", "process"):
        result = run_rt(
            "generate", str(tiny_llama), PROMPT, "--max-tokens", "16", "--json",
            "--set", f"parallel.rank0={rank0}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        tokens[rank0] = json.loads(result.stdout)["token_ids"]
    assert tokens["process"] == tokens["driver"]


def test_each_rank_process_times_its_start_until_it_joined_the_group(tiny_llama):
    runtime = start_runtime(tiny_llama, ("parallel.rank0", "process"), ("parallel.tp", "2"))
    try:
        processes = runtime.services["workers"].processes
        spans = runtime.timeline.spans()
        driver = next(s for s in spans if s.stage == "workers" and s.kind == "stage")
        joined = {s.rank: s for s in spans if s.stage == "workers" and s.kind == "task"}
        assert sorted(joined) == [0, 1]
        for rank, span in joined.items():
            assert span.pid == processes[rank].pid and span.outcome == "ok"
            assert span.notes["process_group"] == "2 ranks (gloo)"
            # forked after the driver asked; joined before its first stage began
            first = min(s.start for s in spans if s.pid == span.pid and s.kind == "stage")
            assert driver.start <= span.start <= span.end <= first
    finally:
        runtime.shutdown()
