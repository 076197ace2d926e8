"""``rt bench compile-cache``: the compile stage's seconds with a cold, a warm and an
imported compile cache.

Every start runs the engine in a child process (``generate_worker``: the real startup
graph, ``compile.mode=default``, the same model and settings) and reads the compile
stage's duration from rank 0's startup timeline. Each round:

- **cold**: a fresh cache folder (``RT_CACHE_DIR``, compile root inside it);
- **warm**: the same folder again;
- **imported**: ``rt cache export FILE --cache-dir COLD/compile`` (compile entries and
  prepared weights), ``rt cache import FILE --cache-dir NEW/compile`` into another
  fresh folder, and a start on that one: what a second machine gets from a shipped cache.

Each situation's ``RT_CACHE_DIR`` links to every entry of the invocation's own except
``prepared`` and ``compile`` (what the export carries), so the converted default model
and the layout probe are shared, not made again, while import and export touch only
the bench's folders. Each situation has its own ``TMPDIR`` too (warm shares cold's), and
``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` are dropped from the children's
environment, so a cache Inductor keeps outside the compile root can neither make a
cold start look warm nor be missed by the export unseen. A compile stage that did not
run (no plugin implements it) has no seconds: ``-``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rt.core import RtError
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext, print_table
from rt.plugins.bench.axes import cell, ratio
from rt.plugins.bench.generate import config_pairs, machine, profile_spec, run_worker

SITUATIONS = ("cold", "warm", "imported")
EXPORT_NAME = "compile-cache.tar.gz"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compile-cache",
        help="compile stage seconds with a cold, a warm and an imported compile cache",
    )
    p.add_argument(
        "model", nargs="?", default=None, help="model folder or hub id (default model if omitted)"
    )
    p.add_argument("--runs", type=int, default=1, help="rounds (medians are reported)")
    p.add_argument(
        "--mode",
        choices=("default", "off"),
        default="default",
        help="compile.mode of every start; off compiles nothing (a dry run of the bench)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="keep the compile caches and the export here (default: a temporary folder)",
    )
    p.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    add_startup_options(p)
    p.set_defaults(handler=bench_compile_cache)


# What the export carries: a situation starts without them. Everything else in the
# invocation's RT_CACHE_DIR (converted models, the layout probe) is linked in.
OWN = ("prepared", "compile")
_CACHE_VARS = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def situation_dir(folder: Path) -> Path:
    """A fresh ``RT_CACHE_DIR`` that shares the invocation's, except ``OWN``."""
    from rt.core.paths import rt_cache_dir

    shared = rt_cache_dir()
    (shared / "models").mkdir(parents=True, exist_ok=True)  # a conversion lands there
    folder.mkdir(parents=True)
    for entry in shared.iterdir():
        if entry.name not in OWN:
            (folder / entry.name).symlink_to(entry)
    (folder / "compile").mkdir()
    return folder


def child_env(cache: Path, tmp: Path) -> dict[str, str]:
    """The invocation's environment with this situation's RT_CACHE_DIR and TMPDIR and
    no Inductor/Triton cache override (see the module docstring)."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARS}
    return {**env, "RT_CACHE_DIR": str(cache), "TMPDIR": str(tmp)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def start_once(
    args: argparse.Namespace, cli: CliContext, cache: Path, tmp: Path, what: str
) -> dict[str, Any]:
    """One engine start on the situation folder ``cache``; its compile figures."""
    pairs = [list(p) for p in config_pairs(args, cli)]
    pairs += [["compile.mode", args.mode, "bench"]]
    pairs += [["compile.cache_dir", str(cache / "compile"), "bench"]]
    spec = {"side": "rt", "model": args.model, "max_tokens": 4, "concurrency": [], "cli": pairs}
    spec.update(profile_spec(cli))
    out = run_worker(spec, f"bench compile-cache: the {what} start", env=child_env(cache, tmp))
    return {
        "compile_s": out["compile_s"],
        "compile_outcome": out["stages"].get("compile", {}).get("outcome"),
        "compile_notes": out["compile_notes"],
        "cache_bytes": folder_bytes(cache / "compile"),
        "model": out["model_name"],
    }


def cache_command(verb: str, file: Path, cache: Path, env: dict[str, str]) -> None:
    """``rt cache export|import FILE --cache-dir CACHE/compile``; a clear RtError when it
    fails or there is no such command."""
    cmd = [sys.executable, "-m", "rt", "cache", verb, str(file)]
    cmd += ["--cache-dir", str(cache / "compile")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        return
    shown = " ".join(cmd[2:])
    if "invalid choice: 'cache'" in proc.stderr:
        raise RtError(
            f"`{shown}` failed: this rt has no `rt cache` command (the plugin that adds "
            "`rt cache export/import` is not installed or not selected); the imported "
            "situation needs it"
        )
    raise RtError(f"`{shown}` failed with exit code {proc.returncode}: {proc.stderr[-1500:]}")


def imported_once(
    args: argparse.Namespace, cli: CliContext, warm: Path, round_dir: Path
) -> dict[str, Any]:
    """Export the warm cache, import it into a fresh folder, start on that folder."""
    file = round_dir / EXPORT_NAME
    fresh = situation_dir(round_dir / "imported")
    tmp = round_dir / "imported-tmp"
    cache_command("export", file, warm, child_env(warm, tmp))
    cache_command("import", file, fresh, child_env(fresh, tmp))
    if any((warm / "compile").iterdir()) and not any((fresh / "compile").iterdir()):
        raise RtError(
            f"`rt cache import {file} --cache-dir {fresh / 'compile'}` succeeded but put "
            "no compile entry there, though the warm cache has some"
        )
    run = start_once(args, cli, fresh, tmp, "imported")
    return {**run, "export_bytes": file.stat().st_size}


def _round(args: argparse.Namespace, cli: CliContext, round_dir: Path, imported: bool) -> dict:
    cold = situation_dir(round_dir / "cold")
    tmp = round_dir / "cold-tmp"  # warm shares it: the same machine, later
    out: dict[str, Any] = {
        "cold": start_once(args, cli, cold, tmp, "cold"),
        "warm": start_once(args, cli, cold, tmp, "warm"),
    }
    if imported:
        try:
            out["imported"] = imported_once(args, cli, cold, round_dir)
        except RtError as e:
            out["imported"] = {"error": str(e)}
    return out


def bench_compile_cache(args: argparse.Namespace, cli: CliContext) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rt-bench-compile-cache-"))
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(args.runs):
            # after a failed export or import, later rounds do not try again
            failed = any("error" in r.get("imported", {}) for r in rounds)
            rounds.append(_round(args, cli, work / f"round{i}", imported=not failed))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = summarize(rounds)
    model = rounds[0]["cold"]["model"]
    result.update(machine=machine(), runs=args.runs, mode=args.mode, model=model)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_results(result)
    return 1 if any("error" in s for s in result["situations"].values()) else 0


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per situation: its runs, the median compile seconds, and cold's median over it."""
    situations: dict[str, Any] = {}
    for name in SITUATIONS:
        runs = [r[name] for r in rounds if name in r]
        if not runs:
            continue
        errors = [r["error"] for r in runs if "error" in r]
        ok = [r for r in runs if "error" not in r]
        s: dict[str, Any] = {"runs": runs, "compile_s": _median([r["compile_s"] for r in ok])}
        s["cache_bytes"] = _median([r["cache_bytes"] for r in ok])
        # what the compile plugin found in its entry (its "cache" note): cold, warm, imported
        found = sorted({r.get("compile_notes", {}).get("cache") for r in ok} - {None})
        s["cache_found"] = "/".join(found) or None
        if errors:
            s["error"] = errors[0]
        situations[name] = s
    cold = situations["cold"]["compile_s"]
    for s in situations.values():
        s["cold_over_this"] = ratio(cold, s["compile_s"])
    return {"situations": situations}


def print_results(r: dict[str, Any]) -> None:
    print(
        f"compile.mode={r['mode']}, model {r['model']}, {r['runs']} round(s), medians; "
        f"{r['machine']}"
    )
    rows = []
    for name, s in r["situations"].items():
        size = None if s["cache_bytes"] is None else s["cache_bytes"] / 2**20
        rows.append(
            [
                name,
                cell(s["compile_s"]),
                cell(s["cold_over_this"], ".2f", "x"),
                cell(size, ".1f"),
                s.get("cache_found") or "-",
                "failed (below)" if "error" in s else "ok",
            ]
        )
    header = ["situation", "compile s", "cold / this", "cache MiB", "cache found", "start"]
    print_table(header, rows)
    if all(s["compile_s"] is None for s in r["situations"].values() if "error" not in s):
        print("  no compile stage ran (no plugin implements rt_compile): no seconds to compare")
    for name, s in r["situations"].items():
        if "error" in s:
            print(f"  {name}: {s['error']}")
