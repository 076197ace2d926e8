"""Where compiled artefacts live and what they are keyed by (no torch at import time).

One entry per rank and key under the compile cache root (``compile.cache_dir``, else
``$RT_CACHE_DIR/compile``)::

    <root>/<model>-<digest>/
        manifest.json    the CompileKey, when it was written, the compile seconds
        inductor/        TORCHINDUCTOR_CACHE_DIR: Inductor's FX graph and AOTAutograd caches,
                         kernels, and precompiled_headers/ (plugins/compile.py)
        triton/          TRITON_CACHE_DIR (CUDA kernels)
        artifacts.bin    torch.compiler.save_cache_artifacts(): the portable "mega-cache"

The digest covers everything that makes an artefact invalid (:class:`CompileKey`), so
a fleet can share one root: each machine, TP rank and torch build finds its own entry.
Every file is written to a temporary name and renamed, so two servers starting at once
on one root both see whole files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import attrs
from rt.core.entry_points import distribution_version
from rt.core.host import cpu_model
from rt.core.paths import rt_cache_dir

MANIFEST = "manifest.json"
ARTIFACTS = "artifacts.bin"


@attrs.frozen
class CompileKey:
    """What a compiled artefact is valid for. Two starts with equal keys reuse each
    other's artefacts; any field that differs gives a separate entry."""

    model: str  # the model folder's name (for people reading `rt cache ls`)
    model_files: str  # digest of config.json and the weight files' names and sizes
    code: str  # the engine's model code version (its plugin says which)
    dtype: str
    quantization: str
    tp: int
    rank: int
    torch: str  # the installed torch build ("2.13.0+cpu")
    triton: str  # the installed triton ("none" on CPU builds)
    device: str  # the CPU model, or the GPU's name

    @property
    def digest(self) -> str:
        fields = json.dumps(attrs.asdict(self), sort_keys=True)
        return hashlib.sha256(fields.encode()).hexdigest()[:16]

    @property
    def dirname(self) -> str:
        return f"{self.model}-{self.digest}"


def compile_root(cache_dir: str | None = None) -> Path:
    """``compile.cache_dir`` when set, else ``$RT_CACHE_DIR/compile``."""
    return Path(cache_dir).expanduser() if cache_dir else rt_cache_dir() / "compile"


def model_files_digest(model_dir: str | Path, weight_files: list[Path]) -> str:
    """A digest of the model that holds on any machine: config.json's bytes and the
    weight files' names and sizes (no path, no mtime, so a copy of the same checkpoint
    elsewhere gets the same digest)."""
    folder = Path(model_dir)
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(weight_files, key=lambda p: p.name):
        h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def device_name(device_type: str, index: int = 0) -> str:
    """The CPU's model name, or the GPU's name ("NVIDIA H100 80GB HBM3")."""
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name(index)
    return cpu_model()


def installed_versions() -> dict[str, str]:
    """The torch and triton builds installed here, read without importing them."""
    return {
        "torch": distribution_version("torch") or "none",
        "triton": distribution_version("triton") or "none",
    }


def entry_dir(root: Path, key: CompileKey) -> Path:
    return root / key.dirname


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename:
    a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(folder: Path, key: CompileKey, **extra: object) -> None:
    record = {"key": attrs.asdict(key), "digest": key.digest, "written": time.time(), **extra}
    write_atomic(folder / MANIFEST, json.dumps(record, indent=1, sort_keys=True).encode())


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an entry, or None when it has none or it is unreadable."""
    try:
        record = json.loads((folder / MANIFEST).read_text())
        CompileKey(**record["key"])  # a manifest of another rt version: not ours
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def list_entries(root: Path) -> list[tuple[Path, dict]]:
    """Every entry under ``root`` with a readable manifest, oldest first."""
    if not root.is_dir():
        return []
    found = [(d, read_manifest(d)) for d in sorted(root.iterdir()) if d.is_dir()]
    entries = [(d, m) for d, m in found if m is not None]
    return sorted(entries, key=lambda e: e[1].get("written", 0))
