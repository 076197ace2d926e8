"""``make gpu-check``: what rt does on a GPU, checked in one command (under 8 minutes on
one H100). Not a pytest module: run it as ``python tests/gpu_check.py``.

1. ``pytest -m gpu``: every GPU-marked test (rt's and contrib's).
2. ``rt generate`` on CPU and on CUDA, float32 on both (bfloat16 may flip near-ties),
   greedy: the same tokens.
3. With two GPUs or more: ``--tp 2`` on CUDA gives the tokens of ``--tp 1``.
4. ``rt serve`` on CUDA in bfloat16 under 8 concurrent requests (``rt bench serve``):
   every request completes, the server exits cleanly.

Then a summary (pass/fail/skip and seconds per check) and the startup timeline of the
CUDA ``rt generate``. Exit code: 0 when every check passed or was skipped, 1 when one
failed, 2 at once on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 470.0  # under 8 minutes, with room to print
PROMPT = "The capital of France is"
MAX_TOKENS = 32
EXIT_NO_CUDA = 2


@attrs.frozen
class Outcome:
    name: str
    status: str  # "pass", "fail", "skip"
    seconds: float
    detail: str = ""


@attrs.frozen
class Ran:
    """A command that ran: exit code (None: killed at its timeout), output, seconds."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float

    def tail(self, lines: int = 25) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


def run(cmd: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> Ran:
    """Run ``cmd`` in a session of its own, so that at the timeout its children (the
    server ``rt bench serve`` starts, the ranks) are killed with it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 1.0))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout_s:.0f} s)"
        return Ran(None, out, err, time.perf_counter() - t0)
    return Ran(proc.returncode, out, err, time.perf_counter() - t0)


def rt(*args: str) -> list[str]:
    return [sys.executable, "-m", "rt", *args]


def generate_command(device: str, tp: int = 1) -> list[str]:
    """Greedy float32 tokens of the default model; on CPU without int4 (``auto`` would
    quantize the GGUF-converted model there, and CUDA runs it dense)."""
    args = ["generate", "--json", "--max-tokens", str(MAX_TOKENS), "--device", device]
    args += ["--dtype", "float32", "--tp", str(tp), "--set", "startup.print_timeline=true"]
    if device == "cpu":
        args += ["--quantization", "none"]
    return rt(*args, PROMPT)


def tokens_of(ran: Ran) -> list[int] | None:
    """The token ids ``rt generate --json`` printed (its last JSON line), else None."""
    for line in reversed(ran.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return list(json.loads(line)["token_ids"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def compare_tokens(got: list[int] | None, want: list[int] | None, what: str) -> tuple[bool, str]:
    """(same, a line saying so or where they part)."""
    if got is None or want is None:
        return False, f"no tokens from {what}"
    if got == want:
        return True, f"{len(got)} tokens identical"
    first = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if first is None:
        return False, f"lengths differ: {len(got)} vs {len(want)}"
    return False, f"token {first} differs: {got[first]} vs {want[first]} ({what})"


def timeline_of(stderr: str) -> str:
    """The startup timeline table rt printed on stderr (header to ``total ... since launch``)."""
    lines = stderr.splitlines()
    start = next((k for k, line in enumerate(lines) if line.startswith("stage ")), None)
    if start is None:
        return "(no timeline in the output)"
    end = next(
        (k for k in range(start, len(lines)) if lines[k].startswith("total ")), len(lines) - 1
    )
    return "\n".join(lines[start : end + 1])


def format_summary(outcomes: Sequence[Outcome]) -> str:
    """The summary table: one row per check, then the total."""
    rows = [("check", "result", "seconds", "detail")]
    rows += [(o.name, o.status.upper(), f"{o.seconds:.1f}", o.detail) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    failed = sum(o.status == "fail" for o in outcomes)
    total = sum(o.seconds for o in outcomes)
    verdict = "all passed" if not failed else f"{failed} failed"
    lines.append(f"{verdict}; {total:.1f} s")
    return "\n".join(line.rstrip() for line in lines)


class Checks:
    """Runs the checks in order, each within its own timeout and the overall budget."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s
        self.outcomes: list[Outcome] = []
        self.failures: list[tuple[str, str]] = []
        self.timeline = ""

    def left(self, own_timeout_s: float) -> float:
        return min(own_timeout_s, self.deadline - time.monotonic())

    def record(
        self, name: str, ok: bool | None, seconds: float, detail: str, log: str = ""
    ) -> None:
        status = "skip" if ok is None else ("pass" if ok else "fail")
        self.outcomes.append(Outcome(name, status, round(seconds, 1), detail))
        print(f"[{status}] {name} ({seconds:.1f} s) {detail}", flush=True)
        if status == "fail" and log:
            self.failures.append((name, log))

    def step(self, name: str, timeout_s: float, body: Callable[[float], None]) -> None:
        budget = self.left(timeout_s)
        if budget < 5:
            self.record(name, False, 0.0, "not run: the 8-minute budget is spent")
            return
        body(budget)


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/gpu_check.py",
        description="run rt's GPU checks: pytest -m gpu, CPU vs CUDA tokens, TP=2 vs TP=1, "
        "rt serve under load; prints a summary and a CUDA startup timeline",
    )
    parser.add_argument(
        "--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for every check together"
    )
    parser.add_argument("--skip-pytest", action="store_true", help="leave out pytest -m gpu")
    args = parser.parse_args(argv)
    n = cuda_devices()
    if n == 0:
        print(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a "
            "machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        return EXIT_NO_CUDA
    print(f"gpu-check: {n} CUDA device(s); budget {args.budget:.0f} s", flush=True)
    checks = Checks(args.budget)
    if not args.skip_pytest:
        checks.step("pytest -m gpu", 240, lambda t: _pytest(checks, t))
    tokens: dict[str, list[int] | None] = {}
    checks.step("generate cpu float32", 90, lambda t: _generate(checks, tokens, "cpu", 1, t))
    checks.step("generate cuda float32", 120, lambda t: _generate(checks, tokens, "cuda", 1, t))
    if n >= 2:
        checks.step("generate cuda tp=2", 120, lambda t: _generate(checks, tokens, "cuda", 2, t))
    else:
        checks.record("generate cuda tp=2", None, 0.0, "one GPU: TP=2 needs two")
    checks.step("serve cuda bf16 x8", 180, lambda t: _serve(checks, t))
    for name, log in checks.failures:
        print(f"\n--- {name}: output tail ---\n{log}")
    print("\nstartup timeline of the CUDA rt generate:\n" + (checks.timeline or "(not run)"))
    print("\n" + format_summary(checks.outcomes))
    return 1 if any(o.status == "fail" for o in checks.outcomes) else 0


def _pytest(checks: Checks, timeout_s: float) -> None:
    contrib = [
        str(p / "tests") for p in sorted((REPO / "contrib").iterdir()) if (p / "tests").is_dir()
    ]
    ran = run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests", *contrib], timeout_s)
    last = ran.stdout.strip().splitlines()[-1:] or ["(no output)"]
    ok = ran.code == 0  # 5 (no test collected) is a failure too: the GPU tests went missing
    checks.record(
        "pytest -m gpu", ok, ran.seconds, last[0], ran.stdout[-6000:] + ran.stderr[-2000:]
    )


def _generate(checks: Checks, tokens: dict, device: str, tp: int, timeout_s: float) -> None:
    ran = run(generate_command(device, tp), timeout_s)
    name = f"generate {device} " + ("float32" if tp == 1 else f"tp={tp}")
    got = tokens_of(ran)
    key = f"{device}{tp}"
    tokens[key] = got
    if device == "cuda" and tp == 1:
        checks.timeline = timeline_of(ran.stderr)
    if ran.code != 0 or got is None:
        checks.record(name, False, ran.seconds, f"exit {ran.code}", ran.tail())
        return
    if device == "cpu":
        checks.record(name, True, ran.seconds, f"{len(got)} tokens (the reference)")
        return
    want_key, what = ("cpu1", "CUDA vs CPU") if tp == 1 else ("cuda1", f"TP={tp} vs TP=1")
    same, detail = compare_tokens(got, tokens.get(want_key), what)
    checks.record(name, same, ran.seconds, detail, "" if same else ran.tail())


def _serve(checks: Checks, timeout_s: float) -> None:
    cmd = rt(
        "bench", "serve", "--concurrency", "8", "--max-tokens", "32", "--stream-share", "0.5",
        "--json", "--set", "parallel.device=cuda", "--set", "model.dtype=bfloat16",
    )  # fmt: skip
    ran = run(cmd, timeout_s)
    try:
        figures = json.loads(ran.stdout[ran.stdout.index("{") :])
    except ValueError:
        checks.record("serve cuda bf16 x8", False, ran.seconds, f"exit {ran.code}", ran.tail())
        return
    ok = ran.code == 0 and figures.get("completed") == 8 and not figures.get("failed")
    detail = (
        f"{figures.get('completed')}/8 completed, {figures.get('output_tokens_per_s')} tok/s, "
        f"ready in {figures.get('ready_s')} s, server exit {figures.get('server_exit_code')}"
    )
    checks.record("serve cuda bf16 x8", ok, ran.seconds, detail, "" if ok else ran.tail())


if __name__ == "__main__":
    # Run as a script, tests/ comes first on sys.path, and tests/http would hide the
    # standard library's http package from torch.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
    raise SystemExit(main())
