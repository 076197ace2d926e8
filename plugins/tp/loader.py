"""Architecture-agnostic safetensors loading, driven by the model's packed-modules map.

Every checkpoint tensor is handed, as a lazy safetensors slice, to the ``weight_loader``
of the parameter it belongs to; the layer reads only the part this rank owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from rt.core.errors import ModelError
from rt.plugins.tp.layers.module import set_registered
from rt.plugins.tp.layers.weight_source import default_weight_loader
from rt.plugins.tp.safetensors_format import read_header
from rt.plugins.tp.weights_plan import checkpoint_files
from safetensors import safe_open
from torch import nn

# Checkpoint tensors that are derived state, not weights.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def replace_parameters(
    model: nn.Module, tensor_for: Callable[[nn.Parameter], torch.Tensor]
) -> None:
    """Replace every parameter by one holding ``tensor_for(old)``, keeping tied
    parameters tied and each parameter's attributes (its ``weight_loader``)."""
    new: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            if id(p) not in new:
                q = nn.Parameter(tensor_for(p), requires_grad=False)
                q.__dict__.update(p.__dict__)
                new[id(p)] = q
            set_registered(module, "_parameters", name, new[id(p)])


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give a model built on the meta device real (uninitialised) storage."""
    replace_parameters(model, lambda p: torch.empty(p.shape, dtype=dtype, device=device))


def _checkpoint_tensors(files: list[Path]) -> Iterator[tuple[str, object]]:
    for path in files:  # every header before any tensor: a bad shard fails fast, by name
        read_header(path)
    with ExitStack() as stack:
        for path in files:
            f = stack.enter_context(safe_open(path, framework="pt", device="cpu"))
            for name in f.keys():
                yield name, f.get_slice(name)


def load_weights(model: nn.Module, model_dir: str | Path) -> list[Path]:
    """Fill every parameter of ``model`` from the checkpoint in ``model_dir``; return
    the files read.

    Raises ModelError naming the tensor when one is missing, unexpected or misshapen,
    and naming the file when one is truncated or its header is corrupt.
    """
    files = checkpoint_files(model_dir)
    packed: dict[str, tuple[str, object]] = getattr(model, "packed_modules_mapping", {})
    params = dict(model.named_parameters())  # tied parameters appear once
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    loaded: set[tuple[str, object]] = set()
    for name, src in _checkpoint_tensors(files):
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        target, shard_id = name, None
        for ckpt_module, (module, sid) in packed.items():
            if f".{ckpt_module}." in name:
                target, shard_id = name.replace(f".{ckpt_module}.", f".{module}."), sid
                break
        param = params.get(target)
        if param is None:
            raise ModelError(
                f"checkpoint tensor {name!r} matches no parameter of {type(model).__name__}"
            )
        loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            loader(param, src, shard_id)
        except ModelError as e:
            raise ModelError(f"checkpoint tensor {name!r}: {e}") from e
        loaded.add((target, shard_id))
    missing = [n for n in _expected(params, packed) if n not in loaded]
    if missing:
        names = [_checkpoint_name(target, sid, packed) for target, sid in missing]
        raise ModelError(
            f"checkpoint in {str(model_dir)!r} lacks tensor(s) {', '.join(map(repr, names))}"
        )
    return files


def _expected(params: dict[str, nn.Parameter], packed: dict) -> list[tuple[str, object]]:
    out = []
    for name in params:
        shard_ids = [sid for module, sid in packed.values() if f".{module}." in name]
        out += [(name, sid) for sid in shard_ids] or [(name, None)]
    return out


def _checkpoint_name(target: str, shard_id: object, packed: dict) -> str:
    for ckpt_module, (module, sid) in packed.items():
        if sid == shard_id and f".{module}." in target:
            return target.replace(f".{module}.", f".{ckpt_module}.")
    return target
