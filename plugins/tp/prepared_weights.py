"""Prepared weights: each rank's parameters saved exactly as the runner holds them.

Loading a checkpoint means slicing each tensor for this rank, merging q/k/v and
gate/up, permuting q/k rows for rotary, and (on CPU) re-laying matrices out for the
decode step (layers/cpu_layout.py); for SmolLM2 that is ~1.1 s of copying. The first start does it and
then saves the result (in a background thread, off the critical path) under
``<rt cache>/prepared/``; every later start maps that file and hands the
memory-mapped tensors straight to the model: no copy at all.

CPU ranks only (``weights_plan.use_prepared_weights``): on CUDA every tensor is copied to
the device whether it comes from a prepared file or the checkpoint, so a prepared file
saves nothing there, and saving one would copy every parameter back to the host.

Each tensor is saved as the contiguous memory it has (``cpu_layout.storage_form``)
with a layout tag in the file's metadata that turns it back into a view. The cache
key covers the checkpoint files (name, size, mtime), the TP size and rank, dtype,
device type, CPU split count and the layout version, so any change to the checkpoint
or to rt's layout builds a new entry.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import torch
from rt.core.build_once import build_once
from rt.core.errors import ModelError
from rt.plugins.tp.layers.cpu_layout import from_storage, logical_shape, storage_form
from rt.plugins.tp.loader import replace_parameters
from rt.plugins.tp.safetensors_format import TensorBytes, read_header, write_file
from rt.plugins.tp.weights_plan import LAYOUT_VERSION, PREPARED_FILE
from safetensors import safe_open
from torch import nn

log = logging.getLogger("rt.weights")

# torch dtypes a prepared file holds (int4 layers add uint8/int32 and bfloat16 tables).
_DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.bool: "BOOL",
}  # fmt: skip


def load_prepared(model: nn.Module, path: Path, device: torch.device) -> bool:
    """Give ``model`` (built on the meta device) the tensors in ``path``.

    Returns False, touching nothing, when the file does not hold exactly the model's
    parameters (a stale or foreign file) or is damaged: the checkpoint then loads instead.
    """
    try:
        read_header(path)  # a damaged file must not be mapped: a page past its end is SIGBUS
    except ModelError as e:
        log.warning("rt: warning: ignoring prepared weights: %s", e)
        return False
    params = dict(model.named_parameters())  # tied parameters appear once
    with safe_open(path, framework="pt", device="cpu") as f:
        if set(f.keys()) != set(params):
            return False
        layouts = json.loads((f.metadata() or {}).get("layouts", "{}"))
        tensors = {}
        for name in params:
            # a view of the mapped file, no copy
            tag = layouts.get(name, "")
            t = from_storage(f.get_tensor(name), tag)
            # split weights ("row") are 3-D views of a 2-D matrix; other tensors (int4
            # scale/zero tables are 3-D too) are saved in their own shape
            shape = logical_shape(t) if tag == "row" else tuple(t.shape)
            if shape != tuple(params[name].shape):
                return False
            tensors[id(params[name])] = t if device.type == "cpu" else t.to(device)
    replace_parameters(model, lambda p: tensors[id(p)])
    return True


def save_prepared_async(model: nn.Module, folder: Path) -> threading.Thread:
    """Save the model's parameters for the next start, in a daemon thread."""
    tensors: dict[str, TensorBytes] = {}
    layouts: dict[str, str] = {}
    for name, p in model.named_parameters():
        storage, tag = storage_form(p.data.detach().cpu())
        tensors[name] = tensor_bytes(storage)
        if tag:
            layouts[name] = tag
    metadata = {"layouts": json.dumps(layouts), "layout": str(LAYOUT_VERSION)}

    def build(tmp: Path) -> None:
        write_file(tmp / PREPARED_FILE, tensors, metadata=metadata)

    def run() -> None:
        try:
            build_once(folder, build)
        except OSError as e:  # a full or read-only cache costs the next start time, nothing else
            log.warning(
                "rt: warning: cannot save prepared weights to %s (%s); serving from the "
                "checkpoint, and the next start loads it again: make RT_CACHE_DIR writable "
                "with room for them",
                folder.parent.parent,
                e.strerror or e,
            )

    thread = threading.Thread(target=run, name="rt-save-prepared-weights", daemon=True)
    thread.start()
    return thread


def tensor_bytes(t: torch.Tensor) -> TensorBytes:
    """The tensor's own memory as bytes to write (no copy when it is contiguous)."""
    t = t.contiguous()
    data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    return TensorBytes(_DTYPE_NAMES[t.dtype], tuple(t.shape), data)
