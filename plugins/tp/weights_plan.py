"""Which weight files load-weights will open, decided without importing torch.

Both the ``load-weights`` stage and the page-cache prefetch (``preload``) ask this
module, so the prefetch reads exactly the files the load then maps: the prepared
weights of each local rank when a previous start saved them, else the checkpoint's
safetensors shards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path

from rt.core.errors import ModelError
from rt.core.paths import rt_cache_dir
from rt.plugins.tp.build_once import MARKER
from rt.plugins.tp.cores import decode_parts

# Bump when the prepared layout changes (see prepared_weights.py and layers/cpu_layout.py).
LAYOUT_VERSION = 3
PREPARED_FILE = "weights.safetensors"


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: from the shard index, else the folder."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no *.safetensors files in {str(model_dir)!r}")
    for f in files:
        if not f.is_file():
            raise ModelError(f"checkpoint shard {str(f)!r} listed in {index.name} is missing")
    return files


def cuda_present() -> bool:
    """An NVIDIA driver is loaded and torch is not a CPU-only build."""
    if not os.path.exists("/proc/driver/nvidia/version"):
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        return "+cpu" not in importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False


def prepared_dir(
    model_dir: str | Path, rank: int, world_size: int, dtype: str, device_type: str
) -> Path:
    """Where one rank's prepared weights live, whether or not they exist yet.

    ``dtype`` is a name ("float32"); the key covers the checkpoint files (name, size,
    mtime), the TP size, dtype, device type, the layout version and how many blocks
    CPU weights are split into (one per thread of the rank: a machine with another
    core count builds its own entry).
    """
    model_dir = Path(model_dir).resolve()
    files = [*checkpoint_files(model_dir), model_dir / "config.json"]
    ident = {
        "model": str(model_dir),
        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
        "tp": world_size,
        "dtype": dtype,
        "device": device_type,
        "layout": LAYOUT_VERSION,
        "parts": decode_parts(world_size, device_type),
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return rt_cache_dir() / "prepared" / f"{model_dir.name}-{key}" / f"rank{rank}-of-{world_size}"


def prepared_file(folder: Path) -> Path | None:
    """The weights file when the folder is complete, else None."""
    return folder / PREPARED_FILE if (folder / MARKER).is_file() else None


def weight_files(
    model_dir: str | Path,
    rank: int,
    world_size: int,
    dtype: str,
    device_type: str,
    use_prepared: bool,
) -> list[Path]:
    """The files load-weights opens for this rank."""
    if use_prepared:
        found = prepared_file(prepared_dir(model_dir, rank, world_size, dtype, device_type))
        if found is not None:
            return [found]
    return checkpoint_files(model_dir)
