"""Which compiled function runs a step, with what padding, and the switch to them.

The compile stage (``rt.core.compile.CompileTarget``) compiles two functions of the
model's body (embedding, layers, final norm: ``(input_ids [T], positions [T]) ->
hidden [T, H]``; attention and collectives are opaque operators, layers/compiled_ops.py):

* ``static``: one static graph per size in ``compile.batch_sizes``; a step of up to
  the largest size runs padded to the next one (padding rows attend to nothing and
  write no KV).
* ``dynamic``: one graph for any larger step (``T >= 2``: prefill, chunked prefill,
  large decode batches). The layers branch on a few token counts (the int4 kernel up
  to 8 tokens, the CPU GEMV layout up to 16), so it is warmed once in each range.

With both warmed, steady-state serving never recompiles: every ``T`` falls in a
compiled range.

In ``background`` mode the functions arrive while the engine serves eagerly. Every
rank runs every step, in lockstep: while a rank waits for a switch it adds one
all-reduce of "ranks not ready yet" to each step, and when the sum is 0 all ranks
switch before the same step.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Mapping

import torch
from rt.plugins.tp.layers.cpu_layout import GEMV_MAX_TOKENS
from rt.plugins.tp.layers.int4 import INT4_MAX_TOKENS

# The dynamic graph is warmed at these sizes (those above the largest static size):
# one per range the layers branch on, and one larger prefill.
DYNAMIC_WARM_SIZES = (2, INT4_MAX_TOKENS + 1, GEMV_MAX_TOKENS + 1, 64)


class CompiledSteps:
    """A runner's compiled functions: none, pending a switch, or in use."""

    def __init__(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.active: Mapping[str, Callable] | None = None
        self.pending: Mapping[str, Callable] | None = None
        self.started: float | None = None  # when the compile stage asked for the functions
        self.installed_at: float | None = None
        self.switched_at: float | None = None
        self.rank = 0  # for the spans it reports
        self.steps = 0  # steps run compiled
        self.events: list[dict] = []  # for the driver's timeline, taken by drain_events

    def dynamic_sizes(self) -> tuple[int, ...]:
        top = self.batch_sizes[-1] if self.batch_sizes else 1
        sizes = {s for s in DYNAMIC_WARM_SIZES if s > top}
        return tuple(sorted(sizes | {max(2, top + 1)}))

    def warm_sizes(self, name: str) -> tuple[int, ...]:
        """The sizes the function ``name`` ("static" or "dynamic") is warmed at."""
        return self.batch_sizes if name == "static" else self.dynamic_sizes()

    def install(self, compiled: Mapping[str, Callable], now: bool) -> None:
        self.installed_at = time.time()
        if now:
            self.active, self.switched_at = dict(compiled), self.installed_at
        else:
            self.pending = dict(compiled)

    def maybe_switch(self, ctx) -> bool:
        """Before a step: switch to the pending functions when every rank has them.
        Every rank calls this before every step (or none does), so at TP > 1 the
        all-reduce below runs in the same order on all of them."""
        if self.active is not None:
            return False
        waiting = self.pending is None
        if ctx.world_size > 1:
            flag = torch.tensor([1.0 if waiting else 0.0], device=ctx.device)
            waiting = float(ctx.all_reduce(flag)[0]) > 0
        if waiting:
            return False
        self.active, self.pending, self.switched_at = self.pending, None, time.time()
        self.events += [
            self._span("compile", self.started or self.installed_at, self.installed_at),
            self._span("switch", self.switched_at, self.switched_at),
        ]
        return True

    def _span(self, plugin: str, start: float, end: float) -> dict:
        # an rt.core.timeline.Span as a dict; the driver adds it to its timeline
        notes: dict = {"seconds": round(end - start, 2)} if plugin == "compile" else {}
        if plugin == "switch":
            notes["compiled"] = "every rank switched to the compiled step"
        return {
            "stage": "compile",
            "plugin": plugin,
            "rank": self.rank,
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "start": start,
            "end": end,
            "outcome": "ok",
            "kind": "task",
            "reason": None,
            "notes": notes,
        }

    def drain_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def pick(self, tokens: int) -> tuple[Callable, int] | None:
        """The compiled function for a step of ``tokens`` tokens and the size to pad it
        to, or None to run eagerly."""
        if self.active is None:
            return None
        i = bisect.bisect_left(self.batch_sizes, tokens)
        if i < len(self.batch_sizes) and "static" in self.active:
            return self.active["static"], self.batch_sizes[i]
        if tokens >= 2 and "dynamic" in self.active:
            return self.active["dynamic"], tokens
        return None

    @property
    def in_use(self) -> bool:
        return self.active is not None


def padded(values: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` ([T] long) followed by zeros up to ``size``."""
    if values.shape[0] == size:
        return values
    out = values.new_zeros(size)
    out[: values.shape[0]] = values
    return out
