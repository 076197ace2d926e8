"""What a zygote imports before it serves, the checks that make forking it safe, and the
record that later tells whether it is still current (``fingerprint.py``)."""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
from rt.core.entry_points import distribution_version
from rt.core.errors import RtError
from rt.core.host import proc_bytes
from rt.core.selection import Selection
from rt.plugins.zygote.fingerprint import SourceFile, path_mtimes, source_files
from rt.plugins.zygote.installation import installation

# torch and the startup machinery every driver and rank runs; then each selected plugin
# imports and loads what it wants through rt_resident_preload (the engine's modules,
# Starlette and Hypercorn, the model's tokenizer): plugins do not import each other.
PRELOAD = ("torch", "rt.core.startup")


@attrs.frozen
class Imported:
    """What the zygote imported, and what was installed when it did."""

    installation: dict[str, Any]
    torch_version: str
    versions: dict[str, str | None]  # distribution -> version: torch and plugin distributions
    mtimes: dict[str, int]  # sys.path folder -> its mtime when the versions were read
    sources: tuple[SourceFile, ...]
    plugins: tuple[str, ...]
    preload: tuple[str, ...]
    preloaded: dict[str, str]  # plugin notes from rt_resident_preload
    seconds: float


def import_everything(
    selection: Selection, config: Any, preload: Sequence[str] = PRELOAD
) -> Imported:
    """Import ``preload``, the selected plugins and stages, and what their
    ``rt_resident_preload`` loads, with the collector paused (``import torch`` makes a
    few hundred thousand objects and frees almost none), then freeze it all: the
    zygote's and every child's collections never walk them again."""
    from rt.core.pluginmanager import build_plugin_manager

    start = time.perf_counter()
    preloaded: dict[str, str] = {}
    gc.disable()
    try:
        for name in preload:
            importlib.import_module(name)
        pm, _ = build_plugin_manager(selection)
        for notes in pm.hook.rt_resident_preload(config=config):
            preloaded.update(notes or {})
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
    problem = fork_safety()
    if problem is not None:
        raise RtError(f"the zygote cannot fork safely: {problem}")
    torch = sys.modules.get("torch")
    mtimes = path_mtimes()
    versions: dict[str, str | None] = {"torch": distribution_version("torch")}
    plugins = selection.plugins
    versions.update({p.dist: p.version for p in plugins if not p.builtin})
    return Imported(
        installation=installation(),
        torch_version=getattr(torch, "__version__", "not imported"),
        versions=versions,
        mtimes=mtimes,
        sources=tuple(source_files(sys.modules)),
        plugins=tuple(p.name for p in plugins),
        preload=tuple(preload),
        preloaded=preloaded,
        seconds=round(time.perf_counter() - start, 3),
    )


def thread_names() -> list[str]:
    """The names of this process's threads, as the kernel knows them."""
    names = []
    for tid in sorted(os.listdir("/proc/self/task")):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            names.append(tid)
    return names


def fork_safety() -> str | None:
    """Why forking this process now would hand children a broken state, or None.

    A fork copies only the forking thread: a lock another thread held stays held in
    the child forever (torch's intra-op pool, an OpenMP team, a Python thread). And a
    CUDA context does not survive a fork: a child could not use the GPU."""
    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads run"
    try:
        threads = thread_names()
    except OSError:
        threads = []
    if len(threads) > 1:
        return f"{len(threads)} threads run ({', '.join(threads)})"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialised by the imports"
    return None


def resident_bytes() -> int:
    """This process's resident memory (VmRSS)."""
    return proc_bytes("/proc/self/status", "VmRSS")
