"""CUDA graphs of a rank's decode step: capture, replay, lazy capture, memory.

The runner's side of ``rt.core.graphs.GraphTarget``. One graph per captured batch size,
each the model's body over :class:`~rt.plugins.tp.static_decode.DecodeBuffers`
(static_decode.py has the shapes and the padding). All graphs share one memory pool
and are captured largest first, each after one warm-up run of its size (cuBLAS, Triton
and NCCL initialise lazily, and a compiled step may still specialise, none of which
may happen inside a capture).

Per step (``replay``): a pure decode step of ``n`` sequences whose contexts fit is
packed into the buffers padded to the captured size, the graph replays, and the first
``n`` rows of its output are the hidden states. Any other step runs uncaptured.

Which size a step replays at, and when a size is captured, follow ``rt.core.graphs.
GraphBook``, from the step's metadata only, so every rank decides alike: at TP > 1 the
captured step holds NCCL all-reduces, and every rank captures at the same point (the
stage, or the start of the same step). A capture that fails on any rank is agreed on
with one all-reduce of a flag, and the size runs uncaptured on every rank for good.

A graph replays the step function it was captured with: when the compile stage's
background switch (or a late ``install_compiled``) changes the active functions, the
graphs are dropped and each size is captured again, lazily, over the compiled step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import torch
from rt.core.graphs import GraphBook, GraphCapture, decode_context_width
from rt.core.step import StepMetadata
from rt.plugins.tp.static_decode import DecodeBuffers, StaticDecodeAttention, run_static_decode

log = logging.getLogger("rt.graphs")


def graph_support(runner) -> str | None:
    """Why this rank cannot capture graphs, or None."""
    if runner.device.type != "cuda" or not torch.cuda.is_available():
        return "no CUDA device: CUDA graphs need one"
    if runner.kv_cache is None:
        return "the KV cache is not allocated (the kv-cache stage did not run)"
    return None


def step_body(runner, size: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The step function a graph of ``size`` rows captures: the compiled one the runner
    would call at that size (compiled_step.py), else the eager body."""
    active = runner.compiled.active
    if active is not None:
        if "static" in active and size in runner.compiled.batch_sizes:
            return active["static"]
        if "dynamic" in active and size >= 2:
            return active["dynamic"]
    return runner._static_body


class CudaGraphs:
    """One rank's decode graphs. Built by the graph-capture stage (``prepare_graphs``),
    used from ``use`` on; ``report`` takes the timeline spans of lazy captures."""

    def __init__(
        self, runner, sizes: Sequence[int], report: Callable[[dict], None] | None = None
    ) -> None:
        self.runner = runner
        self.book = GraphBook(sizes, lazy=True)
        self.in_use = False
        self.report = report or (lambda span: None)
        device = runner.device
        spec = runner.kv_spec
        itemsize = torch.empty((), dtype=spec.dtype).element_size()
        width = decode_context_width(
            runner.model_config.max_model_len,
            runner.block_size,
            max(self.book.sizes),
            2 * spec.num_kv_heads * spec.head_dim * itemsize,
        )
        runner.model.model.rotary_emb.prepare(device)  # made before capturing, not in it
        self.layers = [StaticDecodeAttention(a) for a in runner.attention_layers]
        self.buffers = DecodeBuffers(max(self.book.sizes), width, runner.block_size, device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)  # warm-ups and captures run on it
        # the step functions the graphs replay: a change drops them (before_step)
        self.captured_over = runner.compiled.active
        # the baseline holds no cached free blocks: a capture empties the cache, which
        # would otherwise hide the pool's growth behind blocks released meanwhile
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        self.base_reserved = torch.cuda.memory_reserved(device)
        self.base_free = torch.cuda.mem_get_info(device)[0]
        self.replays = 0

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.book.sizes

    def use(self, lazy: bool) -> None:
        self.book.lazy = lazy
        self.in_use = True

    # -- capture --

    def capture(self, size: int) -> GraphCapture:
        """Warm and capture ``size`` (every rank at the same point); a failure on any
        rank marks the size uncapturable on all of them."""
        start = time.perf_counter()
        error = None
        try:
            with torch.cuda.device(self.runner.device):
                self._capture(size)
        except Exception as e:  # a capture that fails costs its size, not the engine
            error = f"{type(e).__name__}: {e}".splitlines()[0]
        error = self._agree(error)
        seconds = time.perf_counter() - start
        if error is None:
            self.book.captured_ok(size)
        else:
            self.graphs.pop(size, None)
            if self.book.capture_failed(size, error):
                log.warning("CUDA graph of %d sequences not captured; runs uncaptured: %s",
                            size, error)  # fmt: skip
        return GraphCapture(size, round(seconds, 3), self.pool_bytes(), self.device_bytes(), error)

    def _capture(self, size: int) -> None:
        body = step_body(self.runner, size)
        current = torch.cuda.current_stream(self.runner.device)
        self.buffers.load_neutral()
        self.stream.wait_stream(current)
        with torch.inference_mode():
            with torch.cuda.stream(self.stream):
                run_static_decode(body, self.buffers, self.layers, size, writes=False)
            current.wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's CUDA calls (a background compile's warm-up,
            # the p2p check) neither break this capture nor fail because of it
            with torch.cuda.graph(
                graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"
            ):
                out = run_static_decode(body, self.buffers, self.layers, size)
        self.graphs[size] = (graph, out)

    def _agree(self, error: str | None) -> str | None:
        """At TP > 1: failed if any rank failed (one all-reduce, at capture time only)."""
        ctx = self.runner.ctx
        if ctx.world_size == 1:
            return error
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.runner.device)
        if float(ctx.all_reduce(flag)[0]) == 0:
            return None
        return error or "another rank could not capture this size"

    def pool_bytes(self) -> int:
        return max(0, torch.cuda.memory_reserved(self.runner.device) - self.base_reserved)

    def device_bytes(self) -> int:
        return max(0, self.base_free - torch.cuda.mem_get_info(self.runner.device)[0])

    # -- per step --

    def before_step(self) -> None:
        """Between two steps, on every rank: drop graphs of replaced step functions, and
        capture the sizes earlier steps needed (lazy)."""
        if not self.in_use:
            return
        active = self.runner.compiled.active
        if active is not self.captured_over:
            self.captured_over = active
            if self.graphs or self.book.captured:
                self.drop("the compiled step replaced the one the graphs replay")
        for size in self.book.take_waiting():
            start = time.time()
            capture = self.capture(size)
            self.report(self._span("capture", start, time.time(), capture))

    def replay(self, step: StepMetadata) -> torch.Tensor | None:
        """Hidden states ``[n, H]`` of ``step`` from its graph, or None to run it
        uncaptured."""
        if not self.in_use:
            return None
        size = self.book.plan(step.num_seqs, self.buffers.fits(step))
        if size is None:
            return None
        graph, out = self.graphs[size]
        # the upload's event and the replay use the current device's stream: this
        # thread's current device need not be the rank's
        with torch.cuda.device(self.runner.device):
            self.buffers.load(step, size)
            graph.replay()
        self.replays += 1
        return out[: step.num_seqs]

    def drop(self, reason: str) -> None:
        dropped = sorted(self.graphs)
        self.graphs.clear()
        self.book.drop_all()
        self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.empty_cache()  # the old pool's memory, once no graph holds it
        now = time.time()
        self.report(self._span("drop", now, now, None, reason=reason, sizes=dropped))

    def _span(self, plugin: str, start: float, end: float, capture, **notes) -> dict:
        # an rt.core.timeline.Span as a dict; the driver adds it to its timeline
        if capture is not None:
            notes.update(size=capture.size, seconds=capture.seconds,
                         pool_bytes=capture.pool_bytes, device_bytes=capture.device_bytes)  # fmt: skip
        failed = capture is not None and capture.error is not None
        return {
            "stage": "graph-capture",
            "plugin": plugin,
            "rank": self.runner.ctx.rank,
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "start": start,
            "end": end,
            "outcome": "failed" if failed else "ok",
            "kind": "task",
            "reason": capture.error if failed else None,
            "notes": notes,
        }
