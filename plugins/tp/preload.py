"""The engine's ``preload`` hookimpls: three built-in plugins, each switchable.

- ``preload-imports`` (``preload.import_modules``): import torch, tokenizers and the
  engine's modules in a daemon thread, so the stages that need them find them loaded;
  torch's shared libraries are loaded first without the GIL (``torch_libs.py``,
  ``preload.torch_libraries``). A driver whose rank 0 runs in its own process
  (``parallel.rank0 = "process"``) never imports torch: it imports only what it uses.
- ``preload-forkserver`` (``preload.forkserver``): start the forkserver that TP ranks
  are forked from, with those modules preloaded, so N ranks do not each pay the import;
  at CLI entry when rank 0 runs in its own process, since rank 0 then waits on it, and
  then forked from the CLI itself (``forked_forkserver.py``).
- ``preload-prefetch`` (``preload.prefetch``): read the files load-weights and the
  tokenizer will open into the page cache, in large sequential chunks, bounded by
  available memory; chunks the page cache already holds are not read again.

Each returns at once and records its background work as a ``task`` span of the
preload stage; ``--plugins=no:preload-prefetch`` or the config key turns one off.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rt.core import SkipStage, hookimpl
from rt.plugins.tp.paused_gc import import_modules

ENGINE_MODULES = (
    "torch",
    "tokenizers",
    "safetensors",
    "rt.plugins.tp.model_runner",
    "rt.plugins.tp.llm_engine",
    "rt.plugins.tp.engine.sampler",
)
# What a driver whose rank 0 runs in its own process uses: no torch.
DRIVER_MODULES = ("tokenizers", "rt.plugins.tp.llm_engine", "rt.plugins.tp.workers")
# Commands that start an engine in this process: worth importing torch for at CLI entry.
ENGINE_COMMANDS = ("serve", "generate", "worker")
# Commands whose driver may hand rank 0 to a process of its own.
DRIVER_COMMANDS = ("serve", "generate")
# What ranks import, preloaded by the forkserver through the one module it is given.
FORKSERVER_MODULES = (
    "torch",
    "safetensors",
    "rt.plugins.tp.rank_main",
    "rt.plugins.tp.model_runner",
    "rt.plugins.tp.engine.sampler",
)
FORKSERVER_PRELOAD = ["rt.plugins.tp.forkserver_preload"]


def _rank0_elsewhere(command: str | None, config: Any) -> bool:
    return command != "worker" and config.parallel.rank0 == "process"


def _background(runtime: Any, plugin: str, work: Any, *args: Any) -> threading.Thread | None:
    """Run ``work`` in a daemon thread, timed as a task span of the preload stage.

    With ``startup.sequential`` the work runs here, before the stage returns: the
    baseline overlaps nothing.
    """

    def run() -> None:
        try:
            with runtime.timeline.span("preload", plugin, kind="task") as span:
                for key, value in (work(*args) or {}).items():
                    span.notes[key] = value
        except Exception:  # the span records the failure; the stage that needs the work redoes it
            pass

    if runtime.config.startup.sequential:
        run()
        return None
    thread = threading.Thread(target=run, name=f"rt-{plugin}", daemon=True)
    thread.start()
    return thread


class _StartsAtCliEntry:
    """A preload plugin whose work may start at CLI entry (``rt_cli_start``); its
    ``rt_preload`` then records that work instead of starting it."""

    plugin = ""

    def __init__(self) -> None:
        self._early: _Early | None = None

    def _start_early(self, config: Any, work: Any, *args: Any, thread: bool = True) -> None:
        # The sequential baseline overlaps nothing: its preload work runs in its stage.
        if not config.startup.sequential and self._early is None:
            self._early = _Early(f"rt-{self.plugin}", work, *args, thread=thread)

    def _record_early(self, runtime: Any) -> threading.Thread | None:
        early, self._early = self._early, None
        if early is None:
            return None
        return _background(runtime, self.plugin, early.record, runtime)


class ImportModules(_StartsAtCliEntry):
    """Starts the imports at CLI entry (``rt_cli_start``) when the command runs an
    engine, else when the preload stage runs; the stage records the work either way."""

    plugin = "preload-imports"

    @hookimpl
    def rt_cli_start(self, command: str, config: Any) -> None:
        if command in ENGINE_COMMANDS and config.preload.import_modules:
            self._start_early(config, _import_all, *_import_plan(config, command))

    @hookimpl
    def rt_resident_preload(self) -> dict[str, str]:
        # A resident process forks drivers, rank 0 and other ranks: everything any of
        # them imports (torch's libraries load with it: no thread here may run).
        modules = tuple(dict.fromkeys((*ENGINE_MODULES, *DRIVER_MODULES, *FORKSERVER_MODULES)))
        import_modules(modules)
        return {"preload-imports": f"{len(modules)} engine modules"}

    @hookimpl
    def rt_preload(self, config: Any, runtime: Any) -> threading.Thread | None:
        if not config.preload.import_modules:
            raise SkipStage("preload.import_modules is off")
        recorded = self._record_early(runtime)
        if recorded is not None:
            return recorded
        return _background(runtime, self.plugin, _import_all, *_import_plan(config, None))


def _import_plan(config: Any, command: str | None) -> tuple[bool, tuple[str, ...]]:
    """(load torch's libraries first?, modules): without torch for a driver whose
    rank 0 runs in its own process."""
    if _rank0_elsewhere(command, config):
        return False, DRIVER_MODULES
    return config.preload.torch_libraries, ENGINE_MODULES


class _Early:
    """Work started at CLI entry (in a daemon thread, or done at once with
    ``thread=False``), and when it began, for the stage that records it."""

    def __init__(self, name: str, work: Any, *args: Any, thread: bool = True) -> None:
        self.start = time.time()
        self.end: float | None = None
        self.notes: dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        if not thread:
            self._run(work, *args)
            return
        self.thread = threading.Thread(target=self._run, args=(work, *args), name=name, daemon=True)
        self.thread.start()

    def _run(self, work: Any, *args: Any) -> None:
        try:
            self.notes.update(work(*args))
        finally:
            self.end = time.time()

    def record(self, runtime: Any) -> dict[str, Any]:
        from rt.core.timeline import current_span

        if self.thread is not None:
            self.thread.join()
        span = current_span()
        if span is not None:  # the work ran from CLI entry, maybe ending before this stage
            span.start, span.end = self.start, self.end
        return {**self.notes, "started": "at CLI entry"}


def _import_all(torch_libraries: bool, modules: tuple[str, ...]) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if torch_libraries:
        from rt.plugins.tp.torch_libs import load_torch_libraries

        notes["torch_libraries"] = load_torch_libraries()
    import_modules(modules)  # with the garbage collector paused: see paused_gc.py
    notes["modules"] = len(modules)
    if "torch" not in modules:
        notes["torch"] = "not imported: rank 0 runs in its own process"
    return notes


class Forkserver(_StartsAtCliEntry):
    plugin = "preload-forkserver"

    @hookimpl(tryfirst=True)
    def rt_cli_start(self, command: str, config: Any) -> None:
        # --tp is not parsed yet here, but parallel.rank0 is: rank 0 is forked from
        # the forkserver, whatever the TP size, so start it now. Not in a thread, and
        # first of the CLI-entry hookimpls (tryfirst): while this process runs one
        # thread the server is forked from it, inheriting rt's modules (~0.2 s it would
        # otherwise import before torch); once preload-imports' thread runs, it could
        # only be spawned.
        if command in DRIVER_COMMANDS and config.preload.forkserver:
            if _rank0_elsewhere(command, config):
                self._start_early(config, start_forkserver, thread=False)

    @hookimpl
    def rt_preload(self, config: Any, runtime: Any) -> threading.Thread | None:
        if not config.preload.forkserver:
            raise SkipStage("preload.forkserver is off")
        recorded = self._record_early(runtime)
        if recorded is not None:
            return recorded
        local = config.parallel.ranks_on_this_node
        if local <= 1 and not _rank0_elsewhere(None, config):
            raise SkipStage("TP=1 on this node: no worker process to fork")
        return _background(runtime, self.plugin, start_forkserver)


def start_forkserver() -> dict[str, Any]:
    from rt.plugins.tp.forked_forkserver import start

    # Forked from the CLI at CLI entry (its rt modules already imported), else spawned.
    how = start(FORKSERVER_PRELOAD)
    return {"preload": ",".join(FORKSERVER_MODULES), "server": how}


class Prefetch:
    @hookimpl
    def rt_preload(self, config: Any, runtime: Any) -> threading.Thread:
        if not config.preload.prefetch:
            raise SkipStage("preload.prefetch is off")
        return _background(runtime, "preload-prefetch", prefetch_model, config)


def files_to_prefetch(config: Any) -> list[Path]:
    """Config, tokenizer files and the weight files every local rank will open."""
    from rt.plugins.tp.device_plan import planned_device_type, resolve_dtype_name
    from rt.plugins.tp.model_config import ModelConfig
    from rt.plugins.tp.model_source import resolve_model
    from rt.plugins.tp.weights_plan import weight_files

    m = config.model
    model = resolve_model(m.source, m.revision, m.download_dir, m.allow_download)
    model_config = ModelConfig.from_dir(model.path)
    # torch is still being imported: the ranks' own choice (pick_device, _dtype in
    # hooks.py) is guessed the same way, without it
    device = planned_device_type(config.parallel.device)
    dtype = resolve_dtype_name(m.dtype, model_config.dtype, device)
    quantization = model_config.quantization(m.quantization, device)
    tp = config.parallel.tp
    local = config.parallel.ranks_on_this_node
    weights: list[Path] = []
    for rank in range(local):
        weights += weight_files(model.path, rank, tp, dtype, device, m.prepared_cache, quantization)
    small = [f for f in model.files if f.suffix != ".safetensors"]
    return list(dict.fromkeys([*small, *weights]))


def _available_bytes() -> int:
    from rt.core.host import proc_bytes

    return proc_bytes("/proc/meminfo", "MemAvailable")


def prefetch_model(config: Any) -> dict[str, Any]:
    from rt.core.pagecache import READ_CHUNK, read_uncached

    budget = int(_available_bytes() * config.preload.prefetch_max_fraction)
    files = files_to_prefetch(config)
    done, total, read, cached = [], 0, 0, 0
    view = memoryview(bytearray(READ_CHUNK))
    for path in files:
        size = path.stat().st_size
        if total + size > budget:
            break  # reading more than memory holds would evict what was just read
        # What the page cache holds already is not read again (pagecache.py).
        file_read, file_cached = read_uncached(path, view)
        read, cached = read + file_read, cached + file_cached
        total += size
        done.append(str(path))
    return {
        "bytes": total,
        "read": read,
        "already_cached": cached,
        "files": done,
        "skipped": len(files) - len(done),
    }


IMPORTS = ImportModules()
FORKSERVER = Forkserver()
PREFETCH = Prefetch()
