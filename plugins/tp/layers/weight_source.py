"""Reading only the part of a checkpoint tensor that a rank owns.

A weight source is either a ``torch.Tensor`` or a safetensors slice (what
``safe_open(...).get_slice(name)`` returns): both index with slices, and indexing a
safetensors slice reads just those bytes from the file.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from rt.core.errors import ModelError
from torch import nn


class SafeSlice(Protocol):
    def get_shape(self) -> list[int]: ...

    def __getitem__(self, index: Any) -> torch.Tensor: ...


WeightSource = torch.Tensor | SafeSlice


def source_shape(src: WeightSource) -> tuple[int, ...]:
    if isinstance(src, torch.Tensor):
        return tuple(src.shape)
    return tuple(src.get_shape())


def check_shape(src: WeightSource, expected: tuple[int, ...]) -> None:
    got = source_shape(src)
    if got != tuple(expected):
        raise ModelError(f"expected shape {list(expected)}, the checkpoint has {list(got)}")


def read_narrow(src: WeightSource, dim: int, start: int, size: int) -> torch.Tensor:
    """``src`` narrowed to ``[start, start + size)`` along ``dim``, reading only that part."""
    index = [slice(None)] * len(source_shape(src))
    index[dim] = slice(start, start + size)
    return src[tuple(index)]


def read_full(src: WeightSource) -> torch.Tensor:
    return src[tuple(slice(None) for _ in source_shape(src))]


def default_weight_loader(param: nn.Parameter, src: WeightSource, shard_id: Any = None) -> None:
    """Replicated parameter: every rank holds (and reads) all of it."""
    check_shape(src, tuple(param.shape))
    param.data.copy_(read_full(src))
