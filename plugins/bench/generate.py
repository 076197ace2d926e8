"""``rt bench generate``: output tokens/s, rt vs transformers, on the same weights.

Every rate divides the tokens each side produced (counted from its outputs), not the
tokens it was asked for.

rt: one stream, then 16 concurrent streams, through the real startup graph and
engine (TP as given). transformers: ``generate`` for one stream and its continuous
batching ``generate_batch`` for 16. Every side runs in its own child process.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from typing import Any

from rt.core import RtError
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext
from rt.core.host import cpu_model, usable_cores


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="output tokens/s: rt vs transformers, 1 and 16 streams"
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default model if omitted)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per sequence")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--runs", type=int, default=3, help="single-stream runs (the median is reported)"
    )
    p.add_argument("--no-transformers", action="store_true", help="measure rt only")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_startup_options(p)
    p.set_defaults(handler=bench_generate)


def machine() -> dict[str, Any]:
    cores = usable_cores()
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": cores,
        "memory_gib": round(total_kib / 2**20, 1),
        "python": platform.python_version(),
    }


def _child(
    side: str, args: argparse.Namespace, cli: CliContext, model_path: str | None, dtype: str | None
) -> dict[str, Any]:
    spec = {
        "side": side,
        "model": args.model,
        "model_path": model_path,
        "dtype": dtype,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "cli": [list(p) for p in _config_pairs(args, cli)],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "rt.plugins.bench.generate_worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RtError(f"bench generate: the {side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _config_pairs(args: argparse.Namespace, cli: CliContext) -> list[tuple[str, Any, str]]:
    from rt.core.cli_context import config_option_pairs, dotted_option_pairs

    return config_option_pairs(cli.early) + dotted_option_pairs(args)


def bench_generate(args: argparse.Namespace, cli: CliContext) -> int:
    result: dict[str, Any] = {
        "machine": machine(),
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
    }
    rt_side = _child("rt", args, cli, None, None)
    result["model"] = rt_side.pop("model_name")
    result["rt"] = rt_side
    if not args.no_transformers:
        hf = _child("transformers", args, cli, rt_side["model_path"], rt_side["dtype"])
        result["transformers"] = hf
        result["ratios"] = {
            "single_stream": round(rt_side["single_tok_s"] / hf["generate_tok_s"], 2),
            "concurrent": round(rt_side["concurrent_tok_s"] / hf["generate_batch_tok_s"], 2),
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def _print(r: dict[str, Any]) -> None:
    c = r["concurrency"]
    print(f"model {r['model']}, {r['max_tokens']} output tokens per sequence, {r['machine']}")
    # transformers always runs the checkpoint's float weights (for a Q4_1 source, the
    # same values rt's int4 holds)
    print(f"  rt weights: {r['rt']['dtype']}, quantization {r['rt']['quantization']}")
    rows = [
        ("rt", "1 stream", r["rt"]["single_tok_s"]),
        ("rt", f"{c} streams", r["rt"]["concurrent_tok_s"]),
    ]
    if "transformers" in r:
        t = r["transformers"]
        rows += [
            ("transformers generate", "1 stream", t["generate_tok_s"]),
            ("transformers generate_batch", f"{c} streams", t["generate_batch_tok_s"]),
        ]
    for who, what, value in rows:
        print(f"  {who:28s} {what:11s} {value:8.1f} tok/s")
    print(
        f"  rt peak RSS {r['rt']['peak_rss_bytes'] / 2**30:.2f} GiB, "
        f"time to first token {r['rt']['ttft_s'] * 1000:.0f} ms, "
        f"tokens produced {r['rt']['single_tokens']} and {r['rt']['concurrent_tokens']}"
    )
    if "ratios" in r:
        print(
            f"  rt / transformers: single {r['ratios']['single_stream']}x, concurrent {r['ratios']['concurrent']}x"
        )
