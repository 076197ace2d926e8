"""``tests/gpu_check.py`` (``make gpu-check``) on a CPU machine: its flags exist, it exits 2
at once without CUDA, and its parsing and summary are right."""

from __future__ import annotations

import subprocess
import sys

import attrs
import pytest
from rt.core.config import Config

from tests import gpu_check
from tests.conftest import REPO, run_rt

SCRIPT = REPO / "tests" / "gpu_check.py"


def _flags(cmd: list[str]) -> list[str]:
    return [a for a in cmd if a.startswith("--")]


@pytest.mark.parametrize("device,tp", [("cpu", 1), ("cuda", 1), ("cuda", 2)])
def test_generate_uses_flags_rt_generate_has(device, tp):
    help_text = run_rt("generate", "--help").stdout
    cmd = gpu_check.generate_command(device, tp)
    for flag in _flags(cmd):
        assert flag in help_text, f"rt generate has no {flag}"
    assert cmd[-1] == gpu_check.PROMPT and ("--quantization" in cmd) == (device == "cpu")


def test_the_config_keys_it_sets_exist():
    for key in ("parallel.device", "model.dtype", "startup.print_timeline"):
        section, field = key.split(".")
        names = {a.name for a in attrs.fields(type(getattr(Config(), section)))}
        assert field in names, key
    help_text = run_rt("bench", "serve", "--help").stdout
    for flag in ("--concurrency", "--max-tokens", "--stream-share", "--json", "--set"):
        assert flag in help_text


def test_help_and_no_cuda_exit():
    import torch

    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "pytest -m gpu" in out.stdout
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert out.returncode == gpu_check.EXIT_NO_CUDA
    assert "no CUDA device here" in out.stderr and out.stdout == ""


def test_tokens_and_their_comparison():
    ran = gpu_check.Ran(
        0, 'log line\n{"text": "x", "token_ids": [1, 2, 3], "finish_reason": "length"}\n', "", 1.0
    )
    assert gpu_check.tokens_of(ran) == [1, 2, 3]
    assert gpu_check.tokens_of(gpu_check.Ran(1, "", "boom", 1.0)) is None
    assert gpu_check.compare_tokens([1, 2, 3], [1, 2, 3], "x") == (True, "3 tokens identical")
    assert gpu_check.compare_tokens([1, 5, 3], [1, 2, 3], "CUDA vs CPU") == (
        False,
        "token 1 differs: 5 vs 2 (CUDA vs CPU)",
    )
    assert gpu_check.compare_tokens([1, 2], [1, 2, 3], "x") == (False, "lengths differ: 2 vs 3")
    assert gpu_check.compare_tokens(None, [1], "x") == (False, "no tokens from x")


def test_the_timeline_is_cut_from_stderr():
    stderr = "loading\nstage  plugin  rank\n------\nmodel  tp  0\ntotal 1.234s since launch\nbye\n"
    assert gpu_check.timeline_of(stderr) == (
        "stage  plugin  rank\n------\nmodel  tp  0\ntotal 1.234s since launch"
    )
    assert gpu_check.timeline_of("nothing") == "(no timeline in the output)"


def test_the_summary_table():
    outcomes = [
        gpu_check.Outcome("pytest -m gpu", "pass", 61.2, "12 passed"),
        gpu_check.Outcome("generate cuda tp=2", "skip", 0.0, "one GPU: TP=2 needs two"),
        gpu_check.Outcome("serve cuda bf16 x8", "fail", 30.04, "7/8 completed"),
    ]
    assert gpu_check.format_summary(outcomes) == (
        "check               result  seconds  detail\n"
        "-------------------------------------------\n"
        "pytest -m gpu       PASS    61.2     12 passed\n"
        "generate cuda tp=2  SKIP    0.0      one GPU: TP=2 needs two\n"
        "serve cuda bf16 x8  FAIL    30.0     7/8 completed\n"
        "1 failed; 91.2 s"
    )


def test_a_spent_budget_fails_the_checks_left(capsys):
    checks = gpu_check.Checks(budget_s=0)
    checks.step("late", 60, lambda t: pytest.fail("must not run"))
    assert checks.outcomes[0].status == "fail" and "budget" in checks.outcomes[0].detail


def test_a_timeout_kills_the_command_and_its_children():
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"
    ran = gpu_check.run([sys.executable, "-c", code], timeout_s=3)
    assert ran.code is None and ran.stdout.strip() == "up" and "killed after 3 s" in ran.stderr
    assert ran.seconds < 30
