"""``rt generate`` through a zygote: the same tokens as without, its driver and its ranks
forked from it (the timeline says so), two callers at once, and on a GPU a CUDA rank from a zygote
that never initialised CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_rt
from tests.zygote.conftest import zygote_status

pytestmark = pytest.mark.slow

PROMPT = "The quick brown fox"


def _generate(env: dict[str, str], folder: Path, trace: Path, *options: str) -> dict:
    out = run_rt(
        "generate", str(folder), PROMPT, "--max-tokens", "12", "--json",
        "--startup-trace", str(trace), *options, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _zygote_span(trace: Path) -> dict:
    [span] = [
        e["args"]
        for e in json.loads(trace.read_text())["traceEvents"]
        if e.get("ph") == "X" and e["name"] == "preload" and e["args"]["plugin"] == "zygote"
    ]
    return span


def _workers_notes(trace: Path) -> dict:
    events = json.loads(trace.read_text())["traceEvents"]
    return next(
        e["args"]["notes"]
        for e in events
        if e.get("ph") == "X" and e["name"] == "workers" and e["cat"] == "hook"
    )


@pytest.mark.parametrize(
    "options, forked",
    [
        (("--profile", "fast-startup"), 1),
        (("--profile", "fast-startup", "--tp", "2"), 2),
        (("--tp", "2"), 1),  # rank 0 in the driver: only rank 1 has a process
    ],
    ids=["rank0-process", "rank0-process-tp2", "rank0-driver-tp2"],
)
def test_the_same_tokens_through_the_zygote_as_without(
    shared_zygote, tiny_llama, tmp_path, options, forked
):
    before = zygote_status(shared_zygote)
    pid, forks, commands = before["pid"], before["forks"], before["commands"]
    without = _generate(shared_zygote, tiny_llama, tmp_path / "a.json", *options, "--no-zygote")
    span = _zygote_span(tmp_path / "a.json")
    assert span["outcome"] == "skipped" and "--no-zygote" in span["reason"]
    assert "driver" not in span["notes"]
    assert zygote_status(shared_zygote)["forks"] == forks

    through = _generate(shared_zygote, tiny_llama, tmp_path / "b.json", *options)
    assert through["token_ids"] == without["token_ids"]
    span = _zygote_span(tmp_path / "b.json")
    assert span["outcome"] == "ok", span
    assert span["notes"]["driver"].startswith(f"forked from zygote pid {pid} ")
    assert span["notes"]["ranks"] == f"forked from zygote pid {pid}"
    assert _workers_notes(tmp_path / "b.json")["ranks_from"] == f"zygote pid {pid}"
    after = zygote_status(shared_zygote)
    assert after["commands"] == commands + 1  # the driver, and the ranks:
    assert after["forks"] == forks + 1 + forked


def test_without_a_zygote_the_timeline_says_why(tiny_llama, tmp_path):
    env = {"RT_CACHE_DIR": str(tmp_path / "empty-cache")}
    _generate(env, tiny_llama, tmp_path / "t.json", "--profile", "fast-startup")
    span = _zygote_span(tmp_path / "t.json")
    assert span["outcome"] == "skipped"
    assert span["reason"].startswith("no zygote runs for") and "rt zygote start" in span["reason"]


def test_two_callers_at_once(shared_zygote, tiny_llama, tmp_path):
    before = zygote_status(shared_zygote)
    cmd = [
        sys.executable, "-m", "rt", "generate", str(tiny_llama), PROMPT, "--max-tokens", "12",
        "--json", "--profile", "fast-startup", "--tp", "2",
    ]  # fmt: skip
    import os

    env = {**os.environ, **shared_zygote}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    first, second = (json.loads(out)["token_ids"] for out, _ in outs)
    assert first == second
    after = zygote_status(shared_zygote)
    assert after["commands"] == before["commands"] + 2
    assert after["forks"] == before["forks"] + 2 + 4  # two drivers, each with two ranks


@pytest.mark.gpu
def test_a_cuda_rank_forked_from_the_zygote(shared_zygote, tiny_llama, tmp_path):
    options = ("--profile", "fast-startup", "--set", "parallel.device=cuda")
    without = _generate(shared_zygote, tiny_llama, tmp_path / "a.json", *options, "--no-zygote")
    through = _generate(shared_zygote, tiny_llama, tmp_path / "b.json", *options)
    assert through["token_ids"] == without["token_ids"]
    assert _zygote_span(tmp_path / "b.json")["outcome"] == "ok"
    assert zygote_status(shared_zygote)["cuda_initialized"] is False


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("zygote", ["through the zygote", "--no-zygote"])
def test_output_to_a_full_disk_is_an_error_not_a_lost_result(shared_zygote, tiny_llama, zygote):
    # /dev/full fails every write with ENOSPC, as a full disk does. Unbuffered or not,
    # through a zygote's driver (which exits with os._exit) or in the rt process.
    options = [zygote] if zygote.startswith("--") else []
    for unbuffered in ("1", ""):
        env = {**os.environ, **shared_zygote, "PYTHONUNBUFFERED": unbuffered}
        with open("/dev/full", "w") as full:
            out = subprocess.run(
                [sys.executable, "-m", "rt", "generate", str(tiny_llama), PROMPT,
                 "--max-tokens", "2", *options],
                stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=300,
            )  # fmt: skip
        assert out.returncode == 1, out.stderr[-3000:]
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        [line] = [s for s in out.stderr.splitlines() if s.startswith("rt: error:")]
        assert (
            line == "rt: error: cannot write to standard output: [Errno 28] No space left on device"
        )
