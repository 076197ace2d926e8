"""``rt bench startup``: launch -> /health, -> /ready, -> first completion, per stage.

Every run launches ``rt serve`` as a fresh process on a free loopback port, polls
``/health`` and ``/ready``, sends one 16-token completion, reads the server's own
timeline from ``/startup``, measures decode tokens/s once up, and stops the server
with SIGTERM (see ``startup_server``). ``--compare`` runs, in the same invocation,
the floor (``python -c "import torch"``), the baseline (the same server with
``--sequential-startup`` and no prepared weights, see ``BASELINE``) and the fast
path, and prints the ratios. ``--cold`` first evicts the model's files from the page
cache (``posix_fadvise(DONTNEED)``).

``--tp 1,3``, ``--profiles fast-startup,latency``, ``--compile off,background`` and
``--p2p check,cached,table`` (the GPU peer-access check's cost: the ``p2p-check`` stage's
seconds, and at TP >= 2 on CUDA the wait before NCCL starts) are variant axes, measured side by side (see ``startup_variants``).
``--zygote`` adds, per group, a start whose ranks fork from a running zygote (started
for the invocation, see ``startup_zygote``), beside the floor and the fast path, and
reports the zygote's resident memory. A variant whose
compile mode is ``background`` also waits (up to ``--switch-timeout``) for the server
to switch to the compiled step (``rt_compiled 1`` in ``/metrics``), reports the
seconds from launch to the switch, and measures decode tokens/s again after it.

The variants take turns, one run of each per round, so a machine whose speed drifts
during the invocation slows every variant alike. Before each warm run the model's files
(checkpoint and prepared weights) are read into the page cache, untimed: taking turns
means another variant's files were read last, and this VM reclaims page cache that has
sat unused for a few seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rt.core import UsageError
from rt.core.cli_context import CliContext, dotted_option_pairs, print_table
from rt.plugins.bench.axes import COMPILE_MODES, P2P_MODES, cell, int_list, name_list
from rt.plugins.bench.startup_server import floor_once, read_back, serve_once
from rt.plugins.bench.startup_variants import Variant, build_variants, paired_ratios, ratios
from rt.plugins.bench.startup_zygote import BenchZygote, server_env
from rt.plugins.bench.startup_zygote import describe as describe_zygote


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "startup", help="time from `rt serve` to /health, /ready and the first completion"
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default model if omitted)"
    )
    p.add_argument("--tp", default="1", help="TP size, or several to compare: 1,3")
    p.add_argument(
        "--profiles",
        default=None,
        metavar="NAME[,NAME...]",
        help="profiles to compare side by side: fast-startup,latency,throughput",
    )
    p.add_argument(
        "--compile",
        default=None,
        metavar="MODE[,MODE...]",
        help="compile.mode per variant, side by side: off,background",
    )
    p.add_argument(
        "--p2p",
        default=None,
        metavar="MODE[,MODE...]",
        help="p2p.mode per variant, side by side: check,cached,table (GPU peer-access check)",
    )
    p.add_argument("--runs", type=int, default=5, help="runs per variant (medians are reported)")
    p.add_argument(
        "--decode-tokens",
        type=int,
        default=64,
        metavar="N",
        help="once up, time one greedy stream of N tokens (decode tokens/s); 0: skip",
    )
    p.add_argument(
        "--switch-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="compile mode background: wait this long for the switch to the compiled step",
    )
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
    p.add_argument(
        "--zygote",
        action="store_true",
        help="also start with a running zygote (rt zygote start), beside the floor and the "
        "fast path; reports the zygote's resident memory",
    )
    p.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    p.set_defaults(handler=bench_startup)


def _model_files(cli: CliContext, args: argparse.Namespace) -> list[Path]:
    """Every file a start may read: the model folder's and its prepared weights. The
    model is resolved through the ``rt_resolve_model`` hook, as ``rt serve`` does."""
    from rt.core.paths import rt_cache_dir

    extra = [("model.source", args.model, "MODEL")] if args.model else []
    config = cli.config(args, extra, profile=_single_profile(cli))
    resolved = cli.pm.hook.rt_resolve_model(config=config, runtime=None)
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
    """Read the model's files into the page cache, untimed (a test counts the calls)."""
    read_back(files)


def _profiles(args: argparse.Namespace, cli: CliContext) -> list[str] | None:
    """The profile axis: ``--profiles A,B``, or ``--profile A,B`` where the CLI lets a
    list through; ``None`` when each start takes the invocation's own profile."""
    from rt.core.profile_registry import profile_path

    early = cli.early.profile
    if args.profiles and early:
        raise UsageError("give the profiles to compare with --profiles A,B, without --profile")
    text = args.profiles or (early if early and "," in early else None)
    if text is None:
        return None
    names = name_list(text, "--profiles")
    for name in names:
        profile_path(name)  # an unknown name fails here, before any start
    return names


def _single_profile(cli: CliContext) -> str | None:
    """The invocation's profile; of a list (the profile axis), the first: what the bench
    itself resolves (the model) is the same in each."""
    early = cli.early.profile
    return early.split(",")[0] if early else None


def _compile_mode(cli: CliContext, args: argparse.Namespace, v: Variant) -> str:
    """The compile.mode a variant's server runs with: its ``--compile`` value, else
    what its profile and the invocation's options resolve to."""
    if v.compile_mode is not None:
        return v.compile_mode
    return cli.config(args, profile=v.profile or _single_profile(cli)).compile.mode


def bench_startup(args: argparse.Namespace, cli: CliContext) -> int:
    tps = int_list(args.tp, "--tp")
    profiles = _profiles(args, cli)
    modes = name_list(args.compile, "--compile", COMPILE_MODES) if args.compile else None
    extra = [a for p in (cli.early.plugins or []) for a in ("--plugins", p)]
    extra += [a for s in (cli.early.set or []) for a in ("--set", s)]
    if profiles is None and cli.early.profile:
        extra += ["--profile", cli.early.profile]
    extra += [a for key, value, _ in dotted_option_pairs(args) for a in ("--set", f"{key}={value}")]
    cold_files = _model_files(cli, args) if args.cold else None
    p2p = name_list(args.p2p, "--p2p", P2P_MODES) if args.p2p else None
    zygote = getattr(args, "zygote", False)
    variants = build_variants(tps, profiles, modes, args.compare, args.cold, p2p, zygote)
    mode_of = {v.name: _compile_mode(cli, args, v) for v in variants if v.kind != "floor"}

    def start(v: Variant, tp: int, cold: list[Path] | None, decode_tokens: int) -> dict:
        switch = args.switch_timeout if mode_of[v.name] == "background" else None
        with server_env(v.server_env()):
            return serve_once(args.model, tp, v.server_args(extra), cold, decode_tokens, switch)

    # One untimed start per profile and compile mode: conversions and caches are made
    # (a background compile is waited for, so its cache is written).
    primed: dict[tuple[str | None, str | None, str | None], Variant] = {}
    for v in variants:
        if v.kind == "fast":
            primed.setdefault((v.profile, v.compile_mode, v.p2p_mode), v)
    for v in primed.values():
        start(v, tps[0], None, 0)
    results: dict[str, Any] = {"machine": _machine(), "runs": args.runs, "variants": {}}
    all_runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    model_files = cold_files if cold_files is not None else _model_files(cli, args)
    # after the priming starts, which make the caches the zygote's ranks will map too
    beside = BenchZygote([a for a in extra if a != "--no-zygote"]) if zygote else None
    try:
        for _ in range(args.runs):
            for v in variants:
                if v.kind != "cold":
                    _read_back(model_files)  # warm means warm, whatever ran before
                if v.kind == "floor":
                    all_runs[v.name].append(floor_once())
                else:
                    cold = cold_files if v.kind == "cold" else None
                    all_runs[v.name].append(start(v, v.tp, cold, args.decode_tokens))
    finally:
        if beside is not None:
            beside.finish()
    if beside is not None:
        results["zygote"] = beside.summary()
    for v in variants:
        results["variants"][v.name] = summarize(all_runs[v.name], mode_of.get(v.name))
    results["ratios"] = ratios(results["variants"], variants)
    results["ratios_paired"] = paired_ratios(all_runs, variants)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_results(results)
    return 0


def _median(values: Iterable[float | None]) -> float | None:
    """The median of the figures there are; ``None`` when no run had one."""
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(runs: list[dict[str, Any]], compile_mode: str | None) -> dict[str, Any]:
    """Medians over a variant's runs; a figure no run had (no switch, no compile stage)
    is ``None``, printed ``-``."""
    summary: dict[str, Any] = {
        "runs": runs,
        "first_completion_s": _median(r["first_completion_s"] for r in runs),
    }
    if "ready_s" not in runs[0]:
        return summary  # the floor
    summary["compile_mode"] = compile_mode
    for key in (
        "health_s",
        "ready_s",
        "decode_tok_s",
        "switch_s",
        "decode_tok_s_after",
        "compile_s",
    ):
        summary[key] = _median(r.get(key) for r in runs)
    notes = sorted({r["switch_note"] for r in runs if r.get("switch_note")})
    if notes:
        summary["switch_note"] = notes[0]
    summary["stages"] = {
        k: round(statistics.median(r["stages"].get(k) or 0 for r in runs), 4)
        for k in runs[0]["stages"]
    }
    return summary


def _machine() -> dict[str, Any]:
    from rt.plugins.bench.generate import machine

    return machine()


def print_results(r: dict[str, Any]) -> None:
    """The variants side by side: one row each, then their rank-0 stage durations in a
    column each (headed by the row's number), then the ratios."""
    print(f"{r['runs']} runs per variant, medians, seconds since launch; {r['machine']}")
    header = ["#", "variant", "compile", "first completion", "/health", "/ready"]
    header += ["decode tok/s", "switch", "tok/s after", "compile s"]
    rows = []
    for n, (name, s) in enumerate(r["variants"].items(), 1):
        rows.append(
            [
                n,
                name,
                s.get("compile_mode") or "-",
                cell(s["first_completion_s"]),
                cell(s.get("health_s")),
                cell(s.get("ready_s")),
                cell(s.get("decode_tok_s"), ".1f"),
                cell(s.get("switch_s")),
                cell(s.get("decode_tok_s_after"), ".1f"),
                cell(s.get("compile_s")),
            ]
        )
    print_table(header, rows)
    for name, s in r["variants"].items():
        if s.get("switch_note"):
            print(f"  {name}: no switch: {s['switch_note']}")
    staged = [(n, s["stages"]) for n, s in enumerate(r["variants"].values(), 1) if "stages" in s]
    if staged:
        names = list(dict.fromkeys(k for _, stages in staged for k in stages))
        print("stages (rank 0, seconds):")
        print_table(
            ["stage", *(f"#{n}" for n, _ in staged)],
            [[k, *(cell(stages.get(k)) for _, stages in staged)] for k in names],
        )
    if r.get("zygote"):
        print(describe_zygote(r["zygote"]))
    paired = r.get("ratios_paired", {})
    for name, value in r["ratios"].items():
        also = f"  (median of per-round ratios {paired[name]}x)" if name in paired else ""
        print(f"  {name}: {value}x{also}")
