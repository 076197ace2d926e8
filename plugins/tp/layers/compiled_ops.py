"""The two operators a compiled step keeps opaque: paged attention and the TP all-reduce.

``torch.compile`` traces the model's step (embedding, layers, final norm) into one
graph per shape. Two things in it must not be traced:

* **Attention with the KV cache write.** Traced, Inductor functionalizes the write
  into the cache (a view of one big tensor) and copies the whole cache every step, and
  the per-step metadata (block tables, prefill records) would become guards that
  recompile on every new context length. As one custom operator the graph sees
  ``(q, kv, layer) -> out`` and the eager paged attention runs inside.
* **The all-reduce** (gloo, NCCL or rt's shared-memory collectives): a process-group
  call that Dynamo cannot trace breaks the graph in two at every row-parallel layer.

The step's metadata reaches the attention operator through :func:`step_context`, a
per-thread record the runner sets around the compiled call. A thread with no context
(the compile stage warming the graphs, in the background or not) runs the operators
*dry*: attention returns zeros and the all-reduce does not communicate, so compiling
needs neither a KV cache nor the other ranks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

_local = threading.local()
# ParallelContext by handle: a custom operator takes tensors and plain values only.
_contexts: dict[int, Any] = {}


@contextmanager
def step_context(meta: Any, layers: Sequence[torch.nn.Module], tokens: int) -> Iterator[None]:
    """Run the compiled step of ``meta`` (``AttentionMetadata``) in this thread: the
    attention operator of layer ``i`` calls ``layers[i]`` (the eager ``Attention``) on the
    first ``tokens`` rows; rows past them are padding to the compiled batch size."""
    _local.step = (meta, layers, tokens)
    try:
        yield
    finally:
        _local.step = None


def context_handle(ctx: Any) -> int:
    """A small int naming ``ctx`` (a ``ParallelContext``) for :func:`all_reduce`."""
    handle = id(ctx)
    _contexts[handle] = ctx
    return handle


@torch.library.custom_op("rt::paged_attention", mutates_args=())
def paged_attention(q: torch.Tensor, kv: torch.Tensor, layer: int) -> torch.Tensor:
    # q: [T, Hq, D]; kv: [T, 2, Hkv, D] -> [T, Hq, D]. Writes kv into the layer's cache.
    step = getattr(_local, "step", None)
    if step is None:  # compiling: no cache, no metadata
        return torch.zeros_like(q)
    meta, layers, tokens = step
    if tokens == q.shape[0]:
        return layers[layer].forward(q, kv, meta)
    out = torch.zeros_like(q)
    out[:tokens] = layers[layer].forward(q[:tokens], kv[:tokens], meta)
    return out


@paged_attention.register_fake
def _(q: torch.Tensor, kv: torch.Tensor, layer: int) -> torch.Tensor:
    return torch.empty_like(q)


@torch.library.custom_op("rt::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, handle: int) -> torch.Tensor:
    # x: partial sums on this rank -> their sum over the TP group (a new tensor)
    y = x.clone()
    if getattr(_local, "step", None) is None:  # compiling: the other ranks are not here
        return y
    return _contexts[handle].all_reduce(y)


@all_reduce.register_fake
def _(x: torch.Tensor, handle: int) -> torch.Tensor:
    return torch.empty_like(x)


def tp_all_reduce(ctx: Any, handle: int, y: torch.Tensor) -> torch.Tensor:
    """``ctx.all_reduce(y)`` (a ``ParallelContext``); in a compiled step, the opaque operator.

    The layers ask ``torch.compiler.is_dynamo_compiling()``, true only in code Dynamo
    traces, never ``is_compiling()``: that one is a process-wide flag, true in every
    thread while any thread compiles, so an eager step served during a background
    compile would take the compiled branches (and skip this all-reduce).
    """
    if ctx.world_size > 1 and torch.compiler.is_dynamo_compiling():
        return torch.ops.rt.all_reduce(y, handle)
    return ctx.all_reduce(y)
