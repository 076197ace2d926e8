"""``rt bench serve``: chat requests from concurrent clients against a real ``rt serve``.

By default it starts ``rt serve`` as a child process on a free loopback port (the same
plugins, profile, config and ``--set`` overrides as the bench), waits for ``/ready``,
runs the clients, then sends SIGTERM and checks the server exits 0. ``--url`` points
it at a server already running instead (``--pid`` names that server's process, for
its memory).

Without ``--duration`` each of ``--concurrency`` clients sends one request at once.
With it, each client sends request after request for that long (a closed loop), a
``--stream-share`` of them streaming and a ``--disconnect-share`` abandoned mid-response
on purpose (see ``load.py``). It reports requests completed, failed among those that
stayed, disconnected on purpose, output tokens/s (tokens the server reported for
completed requests), TTFT and end-to-end percentiles, and the server's RSS sampled
every second: the mean over the first 30 s after warm-up against the last 30 s. Warm-up
is ``--warmup`` seconds, or longer: until every client's first request ended, when the
server first holds the full concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from rt.core import RtError
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext
from rt.core.host import cpu_model
from rt.plugins.bench.load import LoadPlan, Outcome, first_round_end_s, run_load
from rt.plugins.bench.rss import RssSampler, summarize

READY_TIMEOUT_S = 600.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="concurrent chat requests against rt serve")
    p.add_argument("model", nargs="?", default=None, help="model folder or hub id")
    p.add_argument(
        "--concurrency", type=int, default=32, help="clients, each one request at a time"
    )
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="each client sends request after request for this long (default: one each)",
    )
    p.add_argument(
        "--stream-share", type=float, default=1.0, help="share of requests that stream (0-1)"
    )
    p.add_argument(
        "--disconnect-share",
        type=float,
        default=0.0,
        help="share of requests whose client closes the connection before the end (0-1)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --duration: seconds of load before the first RSS window, at least "
        "until every client's first request ended",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds each client's random choices")
    p.add_argument("--url", default=None, help="use this running server instead of starting one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for RSS")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_startup_options(p)
    p.set_defaults(handler=bench_serve)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _wait_ready(proc: subprocess.Popen, log_path: str) -> str:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RtError(
                f"bench serve: rt serve exited with {proc.returncode}:\n{_tail(log_path)}"
            )
        text = open(log_path).read()
        if url is None and "rt: serving on " in text:
            url = text.split("rt: serving on ", 1)[1].split()[0]
        if url is not None:
            try:
                if httpx.get(url + "/ready", timeout=5, trust_env=False).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise RtError(f"bench serve: rt serve was not ready in {READY_TIMEOUT_S:.0f}s")


def _tail(path: str) -> str:
    return open(path).read()[-3000:]


def _server_command(args: argparse.Namespace, cli: CliContext) -> list[str]:
    cmd = [sys.executable, "-m", "rt", "serve", "--host", "127.0.0.1", "--port", "0"]
    if args.model:
        cmd.append(args.model)
    # The server gets the same plugins, profile, config file and overrides.
    cmd += [f"--plugins={spec}" for spec in getattr(cli.early, "plugins", None) or []]
    cmd += [f"--set={text}" for text in getattr(cli.early, "set", None) or []]
    if cli.early.profile:
        cmd += ["--profile", cli.early.profile]
    if cli.early.config:
        cmd += ["--config", str(cli.early.config)]
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            cmd.append(f"--set={dest}={value}")
    return cmd


def _check(args: argparse.Namespace) -> None:
    if args.concurrency < 1 or args.max_tokens < 1:
        raise RtError("bench serve: --concurrency and --max-tokens must be at least 1")
    for name in ("stream_share", "disconnect_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise RtError(f"bench serve: --{name.replace('_', '-')} must be between 0 and 1")
    if args.duration is not None and args.duration <= 0:
        raise RtError("bench serve: --duration must be positive")
    if args.pid is not None and args.url is None:
        raise RtError("bench serve: --pid names the server of --url; give both, or neither")


def bench_serve(args: argparse.Namespace, cli: CliContext) -> int:
    _check(args)
    plan = LoadPlan(
        args.concurrency,
        args.max_tokens,
        args.duration,
        args.stream_share,
        args.disconnect_share,
        args.seed,
    )
    proc, log, ready_s, code = None, None, None, None
    if args.url is None:
        log = tempfile.NamedTemporaryFile(
            "w", prefix="rt-bench-serve-", suffix=".log", delete=False
        )
        proc = subprocess.Popen(_server_command(args, cli), stdout=subprocess.DEVNULL, stderr=log)
    try:
        if proc is not None:
            launched = time.perf_counter()
            url = _wait_ready(proc, log.name)
            ready_s = round(time.perf_counter() - launched, 3)
        else:
            url = args.url.rstrip("/")
        import httpx

        model = httpx.get(url + "/v1/models", trust_env=False).json()["data"][0]["id"]
        pid = proc.pid if proc is not None else args.pid
        sampler = RssSampler(pid) if pid is not None else None
        if sampler is not None:
            with sampler:
                outcomes, wall = asyncio.run(run_load(url, model, plan))
        else:
            outcomes, wall = asyncio.run(run_load(url, model, plan))
    finally:
        if proc is not None:
            code = _stop(proc)
            log.close()
    figures = _figures(args, model, outcomes, wall)
    figures["ready_s"] = ready_s
    if sampler is not None:
        end = args.duration if args.duration is not None else wall
        # Warm-up lasts at least until every client's first request ended: before that
        # the server is still filling up to the full concurrency (and its KV cache).
        warmup = max(args.warmup, first_round_end_s(outcomes)) if args.duration else 0.0
        figures.update(summarize(sampler.samples, warmup, end))
    figures["server_exit_code"] = code
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        _print(figures)
    if code not in (0, None):
        print(f"rt bench serve: the server exited with {code}:\n{_tail(log.name)}", file=sys.stderr)
    return 0 if code in (0, None) and not figures["failed"] else 1


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _figures(
    args: argparse.Namespace, model: str, outcomes: list[Outcome], wall: float
) -> dict[str, Any]:
    ok = [o for o in outcomes if o.status == "ok"]
    failed = [o for o in outcomes if o.status == "failed"]
    e2e = [o.e2e_s for o in ok]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    tokens = sum(o.tokens for o in ok)
    return {
        "cpu": cpu_model(),
        "command": shlex.join(sys.argv),
        "model": model,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "duration_s": args.duration,
        "stream_share": args.stream_share,
        "disconnect_share": args.disconnect_share,
        "requests": len(outcomes),
        "completed": len(ok),
        "completed_streaming": sum(o.stream for o in ok),
        "failed": len(failed),
        "disconnected": sum(o.status == "disconnected" for o in outcomes),
        "error_messages": sorted({str(o.error) for o in failed})[:5],
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "requests_per_s": round(len(ok) / wall, 2) if wall > 0 else None,
        "e2e_p50_s": _round(_percentile(e2e, 0.5)),
        "e2e_p95_s": _round(_percentile(e2e, 0.95)),
        "ttft_p50_s": _round(_percentile(ttft, 0.5)),
        "ttft_p95_s": _round(_percentile(ttft, 0.95)),
        "ttft_p99_s": _round(_percentile(ttft, 0.99)),
    }


def _print(figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        if key == "rss_curve_mib":
            value = " ".join(f"{t:.0f}s:{mib:.0f}" for t, mib in value)
        elif key.endswith("_bytes"):
            key = key.removesuffix("_bytes") + "_mib"
            value = None if value is None else round(value / 2**20, 1)
        print(f"{key:22} {value}")
