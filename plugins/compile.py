"""Built-in plugin ``compile``: ``torch.compile`` of each rank's step, with a shared cache.

It works with any engine whose ``load-weights`` result is an ``rt.core.compile.
CompileTarget`` (the built-in TP engine's runner is one) and never imports the engine.

``compile.mode``:

* ``off``: a recorded skip; the engine runs eagerly.
* ``default``: compile every step function at every size the engine will call it with,
  before ``/ready``; the warm-up request already runs the compiled step.
* ``background``: start compiling on a thread and return; the engine serves eagerly
  and switches every rank to the compiled step together once all have it.

Inductor's caches live in the entry of this rank's ``CompileKey`` under the compile
root (``rt.core.compile_cache``), so a second start compiles from cache, and an entry
imported from another machine (``rt cache import``) arrives as ``artifacts.bin``, which
is loaded into the entry before compiling.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import attrs
from rt.core import SkipStage, hookimpl, note
from rt.core.compile import CompileTarget
from rt.core.compile_cache import (
    ARTIFACTS,
    CompileKey,
    compile_root,
    device_name,
    entry_dir,
    installed_versions,
    write_atomic,
    write_manifest,
)

log = logging.getLogger("rt.compile")
# (the benches take --compile as a list of modes to compare)
ENGINE_COMMANDS = ("serve", "generate", "worker")


@hookimpl
def rt_add_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command in ENGINE_COMMANDS:
        parser.add_argument(
            "--compile",
            dest="compile.mode",
            default=argparse.SUPPRESS,
            choices=("off", "default", "background"),
            help="torch.compile the model's step: before /ready (default), after it while "
            "serving eagerly (background), or not (off); see docs/compile.md",
        )


@attrs.frozen
class CompileResult:
    """What the compile stage did on this rank."""

    mode: str  # "default" or "background"
    entry: str  # the cache entry's folder
    cache: str  # "warm", "imported" or "cold": what the entry held before compiling
    functions: tuple[str, ...]


@hookimpl(trylast=True)
def rt_compile(config: Any, runtime: Any) -> CompileResult:
    mode = config.compile.mode
    if mode == "off":
        raise SkipStage("compile.mode is off")
    target = runtime.result("load-weights")
    if not isinstance(target, CompileTarget):
        raise SkipStage("the engine's model offers no step functions to compile")
    key, folder = cache_entry(target, config.compile.cache_dir)
    cache = _use_entry(folder)
    note("key", key.digest)
    note("cache", cache)
    functions = tuple(f.name for f in target.step_functions())
    result = CompileResult(mode, str(folder), cache, functions)
    if mode == "default":
        compile_target(target, key, folder, cache, now=True)
        return result
    thread = threading.Thread(
        target=_background, args=(target, key, folder, cache), name="rt-compile", daemon=True
    )
    thread.start()
    note("background", "compiling; the engine switches to the compiled step when every rank has it")
    return result


def cache_entry(target: CompileTarget, cache_dir: str | None) -> tuple[CompileKey, Path]:
    """This rank's key and its entry under the compile root."""
    fields = dict(target.compile_key())
    device_type = fields.pop("device")
    key = CompileKey(**fields, **installed_versions(), device=device_name(device_type))
    return key, entry_dir(compile_root(cache_dir), key)


def compile_now(target: CompileTarget, cache_dir: str | None) -> tuple[str, float]:
    """``compile.mode = "default"`` without a runtime: what the entry held and the seconds
    compiling took."""
    key, folder = cache_entry(target, cache_dir)
    cache = _use_entry(folder)
    return cache, compile_target(target, key, folder, cache, now=True)


def _use_entry(folder: Path) -> str:
    """Point Inductor's and Triton's caches at ``folder``; load its portable artefacts
    when its caches are missing (an entry from ``rt cache import``). Returns what the
    entry held."""
    inductor = folder / "inductor"
    warm = inductor.is_dir() and any(inductor.iterdir())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    _headers_in(inductor / "precompiled_headers")
    if warm:
        return "warm"
    artifacts = folder / ARTIFACTS
    if artifacts.is_file():
        import torch

        torch.compiler.load_cache_artifacts(artifacts.read_bytes())
        return "imported"
    return "cold"


def _headers_in(folder: Path) -> None:
    """Keep Inductor's precompiled C++ kernel header in the entry. Inductor builds it
    under TMPDIR, outside its cache folder, and builds it before it looks for a compiled
    kernel: an entry imported on a machine that never compiled (or whose TMPDIR was
    emptied) paid ~8 s of a ~35 s compile stage for it on a 2-core EPYC, though every
    kernel was in the entry. In the entry it is exported and imported with the kernels.
    (Turning the header off instead changes Inductor's cache key: a full recompile.)"""
    from torch._inductor import codecache

    codecache._HEADER_DIR = str(folder)
    codecache._HEADER_LOCK_DIR = str(folder / "locks")


def compile_target(
    target: CompileTarget, key: CompileKey, folder: Path, cache: str, now: bool
) -> float:
    """Compile and warm every step function, install them, and record the entry.
    Returns the seconds it took."""
    import torch

    start = time.perf_counter()
    compiled = {}
    for f in target.step_functions():
        compiled[f.name] = torch.compile(f.fn, dynamic=f.dynamic)
        target.warm(f.name, compiled[f.name])
    seconds = time.perf_counter() - start
    target.install_compiled(compiled, now=now)
    note("seconds", round(seconds, 2))
    _save_entry(torch, key, folder, cache, seconds)
    return seconds


def _save_entry(torch: Any, key: CompileKey, folder: Path, cache: str, seconds: float) -> None:
    # The portable form of what this process compiled or loaded, for `rt cache export`.
    # A failure here costs the next machine a cold compile, never this start.
    try:
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None and (cache == "cold" or not (folder / ARTIFACTS).is_file()):
            write_atomic(folder / ARTIFACTS, saved[0])
        write_manifest(folder, key, compile_s=round(seconds, 2), cache_before=cache)
    except OSError as e:
        log.warning("could not save the compile cache entry %s: %s", folder, e)


# While compiling in the background, the interpreter lock changes hands this often
# (Python's default is 5 ms). Tracing holds the lock; an eager step takes it back after
# each torch operator, so at 5 ms a request served while compiling ran at a tenth of its
# speed (docs/compile.md).
BACKGROUND_SWITCH_INTERVAL_S = 0.0002


def _background(target: CompileTarget, key: CompileKey, folder: Path, cache: str) -> None:
    import sys

    # The serving thread comes first: this thread (and the compiler processes it starts,
    # which inherit it) runs at the lowest CPU priority.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, BACKGROUND_SWITCH_INTERVAL_S))
    try:
        compile_target(target, key, folder, cache, now=False)
    except Exception:  # the engine keeps serving eagerly
        log.exception("background compile failed; the engine keeps running eagerly")
    finally:
        sys.setswitchinterval(interval)
