"""``rt bench serve``: concurrent streaming chat requests against a real ``rt serve``.

Starts ``rt serve`` as a child process on a free loopback port, waits for
``/ready``, fires ``--concurrency`` streaming chat requests at once with httpx,
and reports end-to-end latency and time to first token (p50/p95), aggregate
output tokens/s and errors. Then it sends SIGTERM and checks the server exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from rt.core import RtError
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of a paperclip.",
    "Tell me a fun fact about octopuses.",
]
READY_TIMEOUT_S = 600.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="concurrent streaming chat requests against rt serve")
    p.add_argument("model", nargs="?", default=None, help="model folder or hub id")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
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


async def _one(client: Any, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, tokens, error = None, 0, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"]["message"]
                elif data.get("usage"):
                    tokens = data["usage"]["completion_tokens"]
                elif ttft is None and data["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - start
    except Exception as e:  # a benchmark reports failures, it does not stop on them
        error = f"{type(e).__name__}: {e}"
    return {"e2e": time.perf_counter() - start, "ttft": ttft, "tokens": tokens, "error": error}


async def _fire(url: str, model: str, n: int, max_tokens: int) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(_one(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(n))
        )
        return list(results), time.perf_counter() - start


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


def bench_serve(args: argparse.Namespace, cli: CliContext) -> int:
    if args.concurrency < 1 or args.max_tokens < 1:
        raise RtError("bench serve: --concurrency and --max-tokens must be at least 1")
    log = tempfile.NamedTemporaryFile("w", prefix="rt-bench-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(_server_command(args, cli), stdout=subprocess.DEVNULL, stderr=log)
    try:
        launched = time.perf_counter()
        url = _wait_ready(proc, log.name)
        ready_s = time.perf_counter() - launched
        import httpx

        model = httpx.get(url + "/v1/models", trust_env=False).json()["data"][0]["id"]
        results, wall = asyncio.run(_fire(url, model, args.concurrency, args.max_tokens))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
    ok = [r for r in results if not r.get("error")]
    e2e = [r["e2e"] for r in ok]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    figures = {
        "model": model,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_messages": sorted({str(r["error"]) for r in results if r.get("error")})[:5],
        "ready_s": round(ready_s, 3),
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "e2e_p50_s": _round(_percentile(e2e, 0.5)),
        "e2e_p95_s": _round(_percentile(e2e, 0.95)),
        "ttft_p50_s": _round(_percentile(ttft, 0.5)),
        "ttft_p95_s": _round(_percentile(ttft, 0.95)),
        "server_exit_code": code,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:20} {value}")
    if code != 0:
        print(f"rt bench serve: the server exited with {code}:\n{_tail(log.name)}", file=sys.stderr)
    return 0 if code == 0 and not figures["errors"] else 1


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
