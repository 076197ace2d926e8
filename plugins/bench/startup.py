"""``rt bench startup``: launch -> /health, -> /ready, -> first completion, per stage.

Every run launches ``rt serve`` as a fresh process on a free loopback port, polls
``/health`` and ``/ready``, sends one 16-token completion, reads the server's own
timeline from ``/startup``, and stops the server with SIGTERM. ``--compare`` runs,
in the same invocation, the floor (``python -c "import torch"``), the baseline (the
same server with ``--sequential-startup`` and no prepared weights, see ``BASELINE``)
and the fast path, and prints the ratios. ``--cold``
first evicts the model's files from the page cache (``posix_fadvise(DONTNEED)``).

The variants take turns, one run of each per round, so a machine whose speed drifts
during the invocation slows every variant alike. Before each warm run the model's files
(checkpoint and prepared weights) are read into the page cache, untimed: taking turns
means another variant's files were read last, and this VM reclaims page cache that has
sat unused for a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rt.core import RtError
from rt.core.cli_context import CliContext, dotted_option_pairs

POLL_S = 0.005
# The baseline the fast path is measured against: what an engine without rt's fast path
# does at every start. Stages run one at a time (preload work inline, nothing overlaps)
# and the checkpoint is loaded and processed again instead of mapping prepared weights.
BASELINE = [
    "--sequential-startup",
    "--set",
    "model.prepared_cache=false",
    "--set",
    "parallel.rank0=driver",  # one process, as an engine without rt's fast path
]
TIMEOUT_S = 600
FLOOR = "floor: python -c 'import torch'"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "startup", help="time from `rt serve` to /health, /ready and the first completion"
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default model if omitted)"
    )
    p.add_argument("--tp", default="1", help="TP size, or several to compare: 1,3")
    p.add_argument("--runs", type=int, default=5, help="runs per variant (medians are reported)")
    p.add_argument(
        "--cold",
        action="store_true",
        help="also run with the model's files evicted from the page cache",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run the floor and the baseline (--sequential-startup, no prepared weights)",
    )
    p.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    p.set_defaults(handler=bench_startup)


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _post(port: int, path: str, body: dict) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_for(port: int, path: str, proc: subprocess.Popen, start: float) -> float:
    while time.perf_counter() - start < TIMEOUT_S:
        if proc.poll() is not None:
            raise RtError(f"rt serve exited with code {proc.returncode} before {path} answered 200")
        try:
            if _get(port, path, timeout=1.0)[0] == 200:
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


def _model_files(cli: CliContext, args: argparse.Namespace) -> list[Path]:
    """Every file a start may read: the model folder's and its prepared weights. The
    model is resolved through the ``rt_resolve_model`` hook, as ``rt serve`` does."""
    from rt.core.paths import rt_cache_dir

    extra = [("model.source", args.model, "MODEL")] if args.model else []
    resolved = cli.pm.hook.rt_resolve_model(config=cli.config(args, extra), runtime=None)
    folder = Path(resolved.path)
    files = [p for p in folder.rglob("*") if p.is_file()]
    prepared = rt_cache_dir() / "prepared"
    if prepared.is_dir():
        files += [
            p
            for p in prepared.rglob("*.safetensors")
            if p.parent.parent.name.startswith(folder.name)
        ]
    return files


def _read_back(files: list[Path]) -> None:
    """Read files (untimed), so the page cache holds them whole for a warm run."""
    from rt.core.pagecache import READ_CHUNK, read_uncached

    buffer = memoryview(bytearray(READ_CHUNK))
    for path in files:
        read_uncached(path, buffer)


def serve_once(
    model: str | None, tp: int, extra: list[str], cold_files: list[Path] | None
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
        status, body = _post(
            port,
            "/v1/completions",
            {
                "model": json.loads(_get(port, "/v1/models")[1])["data"][0]["id"],
                "prompt": "The capital of France is",
                "max_tokens": 16,
                "temperature": 0,
            },
        )
        first = time.perf_counter() - start
        if status != 200:
            raise RtError(f"the first completion failed with HTTP {status}: {body[:500]!r}")
        timeline = json.loads(_get(port, "/startup")[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = ""
    stages = {
        s["stage"]: s["duration_s"]
        for s in timeline["spans"]
        if s["kind"] == "stage" and s["rank"] == 0
    }
    return {
        "health_s": round(health, 4),
        "ready_s": round(ready, 4),
        "first_completion_s": round(first, 4),
        "stages": stages,
        "exit_code": proc.returncode,
        "evicted": evicted,
        "stderr_tail": err[-500:] if proc.returncode else "",
    }


def floor_once() -> dict[str, Any]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return {"first_completion_s": round(time.perf_counter() - start, 4)}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 4)


def bench_startup(args: argparse.Namespace, cli: CliContext) -> int:
    tps = [int(t) for t in str(args.tp).split(",")]
    extra = [a for p in (cli.early.plugins or []) for a in ("--plugins", p)]
    extra += [a for s in (cli.early.set or []) for a in ("--set", s)]
    if cli.early.profile:
        extra += ["--profile", cli.early.profile]
    extra += [a for key, value, _ in dotted_option_pairs(args) for a in ("--set", f"{key}={value}")]
    cold_files = _model_files(cli, args) if args.cold else None
    variants: list[tuple[str, Any]] = []
    if args.compare:
        variants.append((FLOOR, floor_once))
    for tp in tps:
        if args.compare:
            variants.append(
                (
                    f"tp={tp} sequential",
                    lambda tp=tp: serve_once(args.model, tp, [*extra, *BASELINE], None),
                )
            )
        variants.append((f"tp={tp} fast", lambda tp=tp: serve_once(args.model, tp, extra, None)))
        if args.cold:
            variants.append(
                (f"tp={tp} fast cold", lambda tp=tp: serve_once(args.model, tp, extra, cold_files))
            )
    serve_once(
        args.model, tps[0], extra, None
    )  # one untimed start: conversions and caches are made
    results: dict[str, Any] = {"machine": _machine(), "runs": args.runs, "variants": {}}
    all_runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    model_files = cold_files if cold_files is not None else _model_files(cli, args)
    for _ in range(args.runs):
        for name, fn in variants:
            if not name.endswith(" cold"):
                _read_back(model_files)  # warm means warm, whatever ran before
            all_runs[name].append(fn())
    for name, runs in all_runs.items():
        summary = {"runs": runs, "first_completion_s": _median(runs, "first_completion_s")}
        if "ready_s" in runs[0]:
            summary["health_s"] = _median(runs, "health_s")
            summary["ready_s"] = _median(runs, "ready_s")
            summary["stages"] = {
                k: round(statistics.median(r["stages"].get(k) or 0 for r in runs), 4)
                for k in runs[0]["stages"]
            }
        results["variants"][name] = summary
    results["ratios"] = _ratios(results["variants"], tps)
    results["ratios_paired"] = _paired_ratios(all_runs, tps)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print(results)
    return 0


def _ratio_terms(names: set[str], tps: list[int]) -> list[tuple[str, str, str]]:
    """(label, numerator variant, denominator variant) for each ratio the run can give."""
    terms = []
    for tp in tps:
        fast = f"tp={tp} fast"
        if FLOOR in names:
            terms.append((f"tp={tp} fast / floor", fast, FLOOR))
        if f"tp={tp} sequential" in names:
            terms.append((f"tp={tp} sequential / fast", f"tp={tp} sequential", fast))
        if f"tp={tp} fast cold" in names:
            terms.append((f"tp={tp} cold / warm", f"tp={tp} fast cold", fast))
    for tp in tps[1:]:
        terms.append((f"tp={tp} / tp={tps[0]}", f"tp={tp} fast", f"tp={tps[0]} fast"))
    return terms


def _ratios(v: dict[str, Any], tps: list[int]) -> dict[str, float]:
    """Ratios of the variants' median first-completion times."""
    return {
        label: round(v[a]["first_completion_s"] / v[b]["first_completion_s"], 2)
        for label, a, b in _ratio_terms(set(v), tps)
    }


def _paired_ratios(runs: dict[str, list[dict[str, Any]]], tps: list[int]) -> dict[str, float]:
    """The median over rounds of each round's ratio. Every round runs each variant once,
    so a machine whose speed drifts between rounds moves both sides of a round alike:
    a check on the ratio of medians when the machine is noisy."""
    key = "first_completion_s"
    out = {}
    for label, a, b in _ratio_terms(set(runs), tps):
        pairs = zip(runs[a], runs[b], strict=True)  # every variant ran once per round
        out[label] = round(statistics.median(x[key] / y[key] for x, y in pairs), 2)
    return out


def _machine() -> dict[str, Any]:
    from rt.plugins.bench.generate import machine

    return machine()


def _print(r: dict[str, Any]) -> None:
    print(f"{r['runs']} runs per variant, medians, seconds since launch; {r['machine']}")
    for name, s in r["variants"].items():
        line = f"  {name:34s} first completion {s['first_completion_s']:.3f}"
        if "ready_s" in s:
            line += f"  /health {s['health_s']:.3f}  /ready {s['ready_s']:.3f}"
        print(line)
        for stage, dur in s.get("stages", {}).items():
            print(f"      {stage:20s} {dur:.3f}")
    paired = r.get("ratios_paired", {})
    for name, value in r["ratios"].items():
        also = f"  (median of per-round ratios {paired[name]}x)" if name in paired else ""
        print(f"  {name}: {value}x{also}")
