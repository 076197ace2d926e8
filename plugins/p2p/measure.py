"""Measuring peer access: run the probe (``probe.py``) in a subprocess, read its report.

Every pair ``(i, j)``, ``i < j``, is tested in both directions. A pair that fails, or
whose copy kills or hangs the probe, is "no access"; the pairs after it are tested in a
fresh probe, so one bad pair costs one more process start, not the whole table. A probe
that fails before it tests anything (no CUDA there, torch cannot start) is an error:
the table would say nothing true.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import attrs
from rt.core.errors import RtError
from rt.core.p2p import P2PTable
from rt.plugins.p2p.probe import DEFAULT_BYTES, EXIT_CUDA_ERROR, format_pairs

PROBE_MODULE = "rt.plugins.p2p.probe"
# One probe process: import torch, open a context on every GPU, copy a few MiB per pair.
# A pair takes milliseconds; the rest is start-up (seconds), so the limit is generous.
PROBE_TIMEOUT_S = 120.0

Pair = tuple[int, int]


class ProbeError(RtError):
    """The probe could not test any pair."""


@attrs.frozen
class PairResult:
    i: int
    j: int
    ok: bool
    error: str | None = None
    seconds: float = 0.0


@attrs.frozen
class Measurement:
    """What the probes found: every pair's result, the GPUs they saw, what it cost."""

    devices: tuple[str, ...]
    pairs: tuple[PairResult, ...]
    seconds: float
    probes: int

    def table(self, devices: Sequence[str], source: str = "measured") -> P2PTable:
        n = len(devices)
        access = [[i == j for j in range(n)] for i in range(n)]
        for p in self.pairs:
            access[p.i][p.j] = access[p.j][p.i] = p.ok
        failures = tuple((p.i, p.j, p.error or "failed") for p in self.pairs if not p.ok)
        return P2PTable(tuple(devices), access, source, failures)


@attrs.frozen
class ProbeRun:
    """One probe process: its exit code (None: killed at the timeout), output, errors."""

    returncode: int | None
    stdout: str
    stderr: str


def probe_command(pairs: Sequence[Pair], nbytes: int = DEFAULT_BYTES) -> list[str]:
    return [
        sys.executable,
        "-m",
        PROBE_MODULE,
        "--pairs",
        format_pairs(pairs),
        "--bytes",
        str(nbytes),
    ]


def run_probe(command: Sequence[str], timeout_s: float) -> ProbeRun:
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as e:  # killed; keep what it said before
        return ProbeRun(None, _text(e.stdout), _text(e.stderr))
    return ProbeRun(done.returncode, done.stdout, done.stderr)


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def parse_events(stdout: str) -> list[dict]:
    """The probe's JSON lines; anything else it printed (a library's chatter) is skipped."""
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def all_pairs(n: int) -> list[Pair]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def measure_access(
    devices: Sequence[str],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    command: Callable[[Sequence[Pair]], list[str]] = probe_command,
    runner: Callable[[Sequence[str], float], ProbeRun] = run_probe,
) -> Measurement:
    """Test every pair of the GPUs ``devices`` (UUIDs in CUDA order, as this process
    sees them); one GPU has no pairs and starts no probe."""
    t0 = time.perf_counter()
    remaining = all_pairs(len(devices))
    results: dict[Pair, PairResult] = {}
    probes = 0
    while remaining:
        probes += 1
        run = runner(command(remaining), timeout_s)
        events = parse_events(run.stdout)
        ready = next((e for e in events if e["event"] == "ready"), None)
        if ready is None:
            raise ProbeError(_failed_to_start(run, events))
        seen = tuple(ready.get("devices", ()))
        if seen != tuple(devices):
            raise ProbeError(
                f"the P2P probe sees GPUs {list(seen)}, this rank sees {list(devices)}; "
                "run both with the same CUDA_VISIBLE_DEVICES"
            )
        reported = 0
        for e in events:
            if e["event"] == "pair" and (e["i"], e["j"]) in remaining:
                pair = (e["i"], e["j"])
                results[pair] = PairResult(*pair, bool(e["ok"]), e.get("error"), e["seconds"])
                reported += 1
        remaining = [p for p in remaining if p not in results]
        # Exit 3 follows a reported CUDA error: the next probe goes on from there.
        if remaining and (run.returncode != EXIT_CUDA_ERROR or not reported):
            # It died or hung while copying between the first pair it did not report.
            i, j = remaining.pop(0)
            results[(i, j)] = PairResult(i, j, False, _died(run))
    ordered = tuple(results[p] for p in all_pairs(len(devices)))
    return Measurement(tuple(devices), ordered, round(time.perf_counter() - t0, 4), probes)


def _died(run: ProbeRun) -> str:
    how = "hung (killed at the timeout)" if run.returncode is None else _exit(run.returncode)
    tail = _last_line(run.stderr)
    return f"the probe {how} while copying between these GPUs" + (f": {tail}" if tail else "")


def _failed_to_start(run: ProbeRun, events: list[dict]) -> str:
    said = next((e.get("error") for e in events if e["event"] == "error"), None)
    why = said or _last_line(run.stderr) or "no output"
    how = "hung" if run.returncode is None else _exit(run.returncode)
    return (
        f"the P2P probe ({PROBE_MODULE}) {how} before testing any GPU pair: {why}; "
        "fix the CUDA set-up, or skip the check with --set p2p.mode=off"
    )


def _exit(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""
