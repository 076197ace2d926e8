"""Which weight files load-weights will open, decided without importing torch.

Both the ``load-weights`` stage and the page-cache prefetch (``preload``) ask this
module, so the prefetch reads exactly the files the load then maps: the prepared
weights of each local rank when a previous start saved them (CPU ranks only: see
``use_prepared_weights``), else the checkpoint's safetensors shards.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rt.core.build_once import is_complete
from rt.core.errors import ModelError
from rt.core.host import cpu_model, native_bf16
from rt.core.paths import rt_cache_dir
from rt.plugins.tp.layout_probe import known_parts, torch_version

# Bump when the prepared layout changes (prepared_weights.py, layers/cpu_layout.py, int4.py).
LAYOUT_VERSION = 5  # 5: int4 layers keep a bfloat16 copy (layers/int4.py)
PREPARED_FILE = "weights.safetensors"


INDEX_FILE = "model.safetensors.index.json"


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index lists, else
    ``model.safetensors``, else every ``*.safetensors`` in the folder. The one reader of
    the index: the model resolver, the prefetch and the loader all ask here."""
    folder = Path(model_dir)
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(
                f"{index} is not a safetensors index ({e}); re-download the model"
            ) from e
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ModelError(
                f"{folder} is missing weight shards {missing} listed in {INDEX_FILE}; "
                "the download is incomplete: download the model again"
            )
        return shards
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ModelError(
            f"model folder {folder} has no *.safetensors weights; rt loads only safetensors "
            "(convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True))"
        )
    return shards


# Why a CUDA rank loads the checkpoint every time (the timeline notes it).
PREPARED_SKIPPED_ON_CUDA = (
    "off on CUDA: saving copies every parameter back to host memory, and a prepared "
    "file is read and copied to the GPU just as the checkpoint is, so it saves nothing"
)


def use_prepared_weights(requested: bool, device_type: str) -> tuple[bool, str | None]:
    """Whether a rank on ``device_type`` saves and maps prepared weights
    (``model.prepared_cache`` is ``requested``), and why not when it asked for them.

    They pay off on CPU, where the prepared file *is* the rank's memory (mapped, no
    copy) and skips the slicing, merging and decode re-layout. On CUDA every byte
    crosses to the device either way, and the first start would copy all of it back.
    """
    if not requested:
        return False, None
    if device_type == "cuda":
        return False, PREPARED_SKIPPED_ON_CUDA
    return True, None


def prepared_dir(
    model_dir: str | Path,
    rank: int,
    world_size: int,
    dtype: str,
    device_type: str,
    parts: int,
    quantization: str = "none",
) -> Path:
    """Where one rank's prepared weights live, whether or not they exist yet.

    ``dtype`` is a name ("float32"); the key covers the checkpoint files (name, size,
    mtime), the TP size, dtype, device type, the layout version and how many blocks
    CPU weights are split into (``parts``, layout_probe.py: a machine that chose another
    layout builds its own entry) and the quantization ("int4" or "none", resolved).
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
        "parts": parts,
    }
    if quantization != "none":
        # torch packs int4 weights in the layout its kernel for this CPU's instruction
        # set reads: another torch build or another CPU (a shared cache)
        # packs anew; int4 layers keep a bfloat16 copy only where bfloat16 is native
        ident.update(
            quantization=quantization, torch=torch_version(), cpu=cpu_model(), bf16=native_bf16()
        )
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return rt_cache_dir() / "prepared" / f"{model_dir.name}-{key}" / f"rank{rank}-of-{world_size}"


def prepared_file(folder: Path) -> Path | None:
    """The weights file when the folder is complete (marker present, sizes unchanged),
    else None."""
    return folder / PREPARED_FILE if is_complete(folder) else None


def weight_files(
    model_dir: str | Path,
    rank: int,
    world_size: int,
    dtype: str,
    device_type: str,
    use_prepared: bool,
    quantization: str = "none",
) -> list[Path]:
    """The files load-weights opens for this rank (``quantization`` resolved, as
    ``ModelConfig.quantization`` gives it)."""
    parts = known_parts(world_size, device_type)
    use_prepared, _ = use_prepared_weights(use_prepared, device_type)
    if use_prepared and parts is not None:
        folder = prepared_dir(model_dir, rank, world_size, dtype, device_type, parts, quantization)
        found = prepared_file(folder)
        if found is not None:
            return [found]
    return checkpoint_files(model_dir)
