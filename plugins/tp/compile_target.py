"""The TP runner's side of ``rt.core.compile.CompileTarget``: its cache key and warm-up."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rt.core.compile_cache import model_files_digest
from rt.core.entry_points import distribution_version
from rt.plugins.tp.cores import run_with_threads
from rt.plugins.tp.weights_plan import checkpoint_files


@functools.cache
def code_version() -> str:
    """rt's version and a digest of the code a compiled step is traced from (the
    models, the layers and this package's runner), so an edit invalidates artefacts."""
    here = Path(__file__).parent
    h = hashlib.sha256((distribution_version("rt") or "dev").encode())
    for folder in (here / "models", here / "layers"):
        for f in sorted(folder.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
    for name in ("model_runner.py", "compiled_step.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def compile_key(runner: Any) -> dict[str, Any]:
    # the weights' CPU layout changes the traced graph; the probe's timings must not
    # (they differ between runs and machines that share a cache)
    parts = runner.layout.parts if runner.layout is not None else 1
    return {
        "model": runner.model_dir.name,
        "model_files": model_files_digest(runner.model_dir, checkpoint_files(runner.model_dir)),
        "code": f"{code_version()} parts {parts}",
        "dtype": str(runner.dtype).removeprefix("torch."),
        "quantization": runner.quantization,
        "tp": runner.ctx.world_size,
        "rank": runner.ctx.rank,
        "device": runner.device.type,
    }


def warm(runner: Any, name: str, compiled: Callable) -> None:
    """Run ``compiled`` at every size the runner pads steps to, as ``run`` calls it
    (inference mode, this rank's threads), with no step context: the opaque operators
    run dry (layers/compiled_ops.py), so no KV cache or other rank is needed."""
    sizes = runner.compiled.warm_sizes(name)
    dynamic = name == "dynamic"
    # a graph per static size, plus a few for the dynamic one; Dynamo's settings are per
    # thread, so it is set on the thread that compiles
    limit = max(len(sizes) + 8, torch._dynamo.config.recompile_limit)

    def call_each_size() -> None:
        with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=limit):
            for size in sizes:
                ids = torch.zeros(size, dtype=torch.long, device=runner.device)
                positions = torch.zeros(size, dtype=torch.long, device=runner.device)
                if dynamic:
                    torch._dynamo.mark_dynamic(ids, 0)
                    torch._dynamo.mark_dynamic(positions, 0)
                compiled(ids, positions)

    # Dynamo guards on the thread count: warm with the step loop's (bind_compute_thread),
    # in a thread whose OpenMP team ends with it.
    run_with_threads(call_each_size, runner.compute_threads)
