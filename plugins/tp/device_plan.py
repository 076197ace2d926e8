"""Device decisions that must be made before (or without) importing torch.

The ranks choose their device with torch (``distributed.pick_device``: ``auto`` means
CUDA when ``torch.cuda.is_available()``). Two things decide earlier and must agree
with them: the page-cache prefetch (``preload.py``), which picks the files the ranks
will open while torch is still being imported, and a driver whose rank 0 runs in its
own process (``parallel.rank0 = "process"``), which never imports torch but must refuse
more ranks than this node has GPUs before it starts any. Both ask here. An explicit
``parallel.device`` is the answer everywhere; only ``auto`` is guessed, cheaply.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rt.core.entry_points import distribution_version
from rt.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
_NVIDIA_PROC = Path("/proc/driver/nvidia")
_DEV = Path("/dev")


def _torch_is_cpu_build() -> bool:
    version = distribution_version("torch")  # torch-free: reads the installed metadata
    return version is None or "+cpu" in version


def _visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list (None when unset). CUDA stops at the first entry
    that is not a device ("-1", say), so the list ends there too."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def _driver_gpus() -> int | None:
    """GPUs the NVIDIA driver shows (its /proc entries, else the /dev/nvidiaN nodes a
    container is given); None when neither is there."""
    gpus = _NVIDIA_PROC / "gpus"
    if gpus.is_dir():
        return sum(1 for _ in gpus.iterdir())
    try:
        nodes = [p for p in _DEV.iterdir() if re.fullmatch(r"nvidia\d+", p.name)]
    except OSError:
        return None
    return len(nodes) if nodes else None


def visible_gpu_count() -> int | None:
    """How many GPUs a CUDA process started here would see, without torch; None when
    it cannot be told (torch then decides, on the ranks)."""
    if _torch_is_cpu_build():
        return 0
    physical = _driver_gpus()
    if not (_NVIDIA_PROC / "version").exists() and physical is None:
        return None
    visible = _visible_devices()
    if visible is None:
        return physical
    return len(visible) if physical is None else min(len(visible), physical)


def cuda_present() -> bool:
    """A torch-free guess at ``torch.cuda.is_available()``: a CUDA build of torch, an
    NVIDIA driver (its /proc entry, or a /dev/nvidiaN node where a container hides
    /proc/driver/nvidia) and devices not hidden by CUDA_VISIBLE_DEVICES."""
    if _torch_is_cpu_build():
        return False
    if not (_NVIDIA_PROC / "version").exists() and not _driver_gpus():
        return False
    visible = _visible_devices()
    return visible is None or len(visible) > 0


def planned_device_type(requested: str) -> str:
    """The device type the ranks will use, as far as it can be told without torch:
    ``requested`` (``parallel.device``) when it names one, else the guess."""
    if requested not in DEVICES:
        raise ConfigError(f"parallel.device = {requested!r}: use one of {', '.join(DEVICES)}")
    if requested != "auto":
        return requested
    return "cuda" if cuda_present() else "cpu"


def check_ranks_fit(local_ranks: int, visible_gpus: int | None) -> None:
    """Every rank on a node takes a GPU of its own: two NCCL ranks on one GPU hang or
    fail deep inside NCCL, so refuse before any rank starts. ``visible_gpus`` None:
    unknown here (the ranks check again with torch)."""
    if visible_gpus is None or local_ranks <= visible_gpus:
        return
    raise ConfigError(
        f"{local_ranks} ranks would run on this node but it has {visible_gpus} visible "
        f"GPU(s), and each rank needs a GPU of its own: use --tp {max(visible_gpus, 1)} "
        "(or parallel.local_ranks at most that, with the other ranks on other nodes), "
        "make more GPUs visible (CUDA_VISIBLE_DEVICES), or run on CPU with --device cpu"
    )


def check_gpus_for_ranks(local_ranks: int, requested: str, use_torch: bool) -> str:
    """The driver's check, before it starts any rank; returns the device type.

    ``use_torch``: this process imports torch anyway (rank 0 runs here), so ask it;
    otherwise (rank 0 in its own process) decide without it."""
    if use_torch:
        import torch
        from rt.plugins.tp.distributed import resolve_device_type

        device_type = resolve_device_type(requested)
        visible = torch.cuda.device_count() if device_type == "cuda" else None
    else:
        device_type = planned_device_type(requested)
        visible = visible_gpu_count() if device_type == "cuda" else None
        if visible == 0:  # asked for cuda explicitly (auto would have said cpu)
            cuda = None if _torch_is_cpu_build() else ""
            raise ConfigError(no_cuda_message(distribution_version("torch") or "?", cuda))
    if device_type == "cuda":
        check_ranks_fit(local_ranks, visible)
    return device_type


def no_cuda_message(torch_version: str, cuda_build: str | None) -> str:
    """Why ``parallel.device = cuda`` cannot be served here, and what to do.
    ``cuda_build``: ``torch.version.cuda`` (None: a CPU-only build; "": unknown)."""
    if cuda_build is None:
        why = f"torch {torch_version} is a CPU-only build: install a CUDA build of torch"
    elif os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not _visible_devices():
        why = (
            f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU: "
            "unset it or name a GPU"
        )
    else:
        build = f" (CUDA {cuda_build})" if cuda_build else ""
        why = (
            f"torch {torch_version}{build} finds no usable GPU: check that the NVIDIA "
            "driver is loaded and the GPU is visible to this process (nvidia-smi)"
        )
    return f"parallel.device = cuda, but {why}; or run on CPU with --device cpu (or auto)"


def resolve_dtype_name(requested: str, checkpoint_dtype: str, device_type: str) -> str:
    """``model.dtype`` for a checkpoint stored in ``checkpoint_dtype`` on ``device_type``.

    ``auto`` keeps the checkpoint's dtype, except a float32 checkpoint on CUDA runs in
    bfloat16: float32 halves the GPU's throughput and doubles the weights' and the KV
    cache's memory for no gain in a served model's outputs worth that. On CPU float32
    stays (bfloat16 is emulated, and slower, on CPUs without native support).
    """
    if requested != "auto":
        return requested
    if device_type == "cuda" and checkpoint_dtype == "float32":
        return "bfloat16"
    return checkpoint_dtype
