"""``rt bench generate``: output tokens/s, rt vs transformers, on the same weights.

Every rate divides the tokens each side produced (counted from its outputs), not the
tokens it was asked for.

rt: one stream, then 16 concurrent streams (``--concurrency``, a list), through the
real startup graph and engine (TP as given). transformers: ``generate`` for one
stream and its continuous batching ``generate_batch`` for more. Every side runs in its
own child process. ``--compile off,default`` runs rt once per compile mode, side by
side, and prints compiled / eager for each number of streams, with each variant's
compile stage seconds from its startup timeline (``-`` when the stage did not run).
``background`` measures from the moment startup ends, whatever step then runs.
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
from rt.core.cli_context import CliContext, print_table
from rt.core.host import cpu_model, usable_cores
from rt.plugins.bench.axes import COMPILE_MODES, cell, int_list, name_list, ratio


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate", help="output tokens/s: rt vs transformers, 1 and 16 streams"
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default model if omitted)"
    )
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens per sequence")
    p.add_argument(
        "--concurrency",
        default="1,16",
        metavar="N[,N...]",
        help="concurrent streams, or several to measure in turn: 1,16 (the default)",
    )
    p.add_argument(
        "--compile",
        default=None,
        metavar="MODE[,MODE...]",
        help="compile.mode per rt variant, side by side: off,default",
    )
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


def run_worker(spec: dict[str, Any], what: str, env: dict[str, str] | None = None) -> dict:
    """Run ``generate_worker`` on ``spec`` in a child process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "rt.plugins.bench.generate_worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RtError(f"{what} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(
    side: str,
    args: argparse.Namespace,
    cli: CliContext,
    concurrency: list[int],
    model_path: str | None = None,
    dtype: str | None = None,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    pairs = [list(p) for p in config_pairs(args, cli)]
    if compile_mode is not None:  # last: it wins over --set compile.mode
        pairs.append(["compile.mode", compile_mode, "--compile"])
    spec = {
        "side": side,
        "model": args.model,
        "model_path": model_path,
        "dtype": dtype,
        "max_tokens": args.max_tokens,
        "concurrency": concurrency,
        "runs": args.runs,
        "cli": pairs,
        **profile_spec(cli),
    }
    return run_worker(spec, f"bench generate: the {variant_name(side, compile_mode)} side")


def profile_spec(cli: CliContext) -> dict[str, str | None]:
    """The invocation's ``--profile`` and ``--config``, for the worker's config."""
    return {"profile": cli.early.profile, "config_file": cli.early.config}


def config_pairs(args: argparse.Namespace, cli: CliContext) -> list[tuple[str, Any, str]]:
    from rt.core.cli_context import config_option_pairs, dotted_option_pairs

    return config_option_pairs(cli.early) + dotted_option_pairs(args)


def variant_name(side: str, compile_mode: str | None) -> str:
    return side if compile_mode is None else f"{side} compile={compile_mode}"


def bench_generate(args: argparse.Namespace, cli: CliContext) -> int:
    concurrency = int_list(args.concurrency, "--concurrency")
    modes: list[str | None] = (
        list(name_list(args.compile, "--compile", COMPILE_MODES)) if args.compile else [None]
    )
    result: dict[str, Any] = {
        "machine": machine(),
        "max_tokens": args.max_tokens,
        "concurrency": concurrency,
        "variants": {},
    }
    for mode in modes:
        side = _child("rt", args, cli, concurrency, compile_mode=mode)
        result["model"] = side.pop("model_name")
        result["variants"][variant_name("rt", mode)] = {"compile_mode": mode, **side}
    if not args.no_transformers:
        first = next(iter(result["variants"].values()))
        hf = _child("transformers", args, cli, concurrency, first["model_path"], first["dtype"])
        result["transformers"] = hf
    result["ratios"] = ratios(result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def ratios(r: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per number of streams: each compiled variant's decode tokens/s over the eager one's
    (``compile=off``, else the first variant), and each rt variant's tokens/s over
    transformers' (the same measure on both sides: tokens produced over wall time)."""
    out: dict[str, dict[str, float | None]] = {}
    variants = r["variants"]
    modes = {name: v.get("compile_mode") for name, v in variants.items()}
    if len(variants) > 1:
        base = next((n for n, m in modes.items() if m == "off"), next(iter(variants)))
        for name, v in variants.items():
            if name != base:
                label = f"compile={modes[name]} / compile={modes[base]} (decode tok/s)"
                out[label] = {
                    c: ratio(s["decode_tok_s"], variants[base]["streams"][c]["decode_tok_s"])
                    for c, s in v["streams"].items()
                }
    if "transformers" in r:
        hf = r["transformers"]["streams"]
        for name, v in variants.items():
            out[f"{name} / transformers (tok/s)"] = {
                c: ratio(s["tok_s"], hf[c]["tok_s"]) for c, s in v["streams"].items() if c in hf
            }
    return out


def _streams(c: str) -> str:
    return f"{c} stream" if c == "1" else f"{c} streams"


def _print(r: dict[str, Any]) -> None:
    print(f"model {r['model']}, {r['max_tokens']} output tokens per sequence, {r['machine']}")
    first = next(iter(r["variants"].values()))
    # transformers always runs the checkpoint's float weights (for a Q4_1 source, the
    # same values rt's int4 holds)
    print(f"  rt weights: {first['dtype']}, quantization {first['quantization']}")
    rows = []
    for name, v in r["variants"].items():
        for c, s in v["streams"].items():
            rows.append(
                [
                    name,
                    _streams(c),
                    cell(s["tok_s"], ".1f"),
                    cell(s["decode_tok_s"], ".1f"),
                    cell(s["ttft_s"] * 1000, ".0f"),
                    "/".join(str(t) for t in s["tokens"]),
                    cell(v["compile_s"], ".2f"),
                ]
            )
    for c, s in r.get("transformers", {}).get("streams", {}).items():
        tokens = str(s.get("tokens", "-"))
        rows.append([f"transformers {s['api']}", _streams(c), cell(s["tok_s"], ".1f")])
        rows[-1] += ["-", "-", tokens, "-"]  # no per-token timing, no compile stage
    header = ["variant", "streams", "tok/s", "decode tok/s", "ttft ms", "tokens", "compile s"]
    print_table(header, rows)
    rss = ", ".join(
        f"{name} {v['peak_rss_bytes'] / 2**30:.2f} GiB" for name, v in r["variants"].items()
    )
    print(f"  peak RSS: {rss}")
    for label, per_c in r["ratios"].items():
        parts = ", ".join(f"{_streams(c)} {cell(x, '.2f', 'x')}" for c, x in per_c.items())
        print(f"  {label}: {parts}")
