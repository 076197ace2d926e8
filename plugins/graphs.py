"""Built-in plugin ``graphs``: CUDA graphs of each rank's decode step.

It works with any engine whose ``load-weights`` result is an ``rt.core.graphs.
GraphTarget`` (the built-in TP engine's runner is one) and never imports the engine.

``graphs.mode``:

* ``off``: a recorded skip; every step runs uncaptured.
* ``eager``: capture every size of ``graphs.capture_sizes`` before ``/ready``, largest
  first, into one memory pool; the stage notes each size's capture seconds and the
  pool's memory.
* ``lazy`` (the default): capture nothing now; a size is captured the first time a
  step needs it, between that step and the next (``rt.core.graphs.GraphBook``), and
  each capture is a task span on the timeline.

On a CPU rank the stage is a recorded skip: "no CUDA device: CUDA graphs need one".
"""

from __future__ import annotations

import argparse
from typing import Any

import attrs
from rt.core import SkipStage, hookimpl, note
from rt.core.graphs import GraphTarget, plan_capture_sizes

ENGINE_COMMANDS = ("serve", "generate", "worker")


@hookimpl
def rt_add_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command in ENGINE_COMMANDS:
        parser.add_argument(
            "--graphs",
            dest="graphs.mode",
            default=argparse.SUPPRESS,
            choices=("off", "eager", "lazy"),
            help="CUDA graphs of the decode step: captured before /ready (eager), on first "
            "use of each batch size (lazy, the default), or none (off); see docs/graphs.md",
        )


@attrs.frozen
class GraphsResult:
    """What the graph-capture stage did on this rank."""

    mode: str  # "eager" or "lazy"
    sizes: tuple[int, ...]  # the sizes the engine captures (now or lazily)
    captured: tuple[int, ...] = ()  # captured by the stage (eager)
    failed: tuple[int, ...] = ()  # not capturable: those steps run uncaptured
    pool_bytes: int = 0


@hookimpl(trylast=True)
def rt_graph_capture(config: Any, runtime: Any) -> GraphsResult:
    mode = config.graphs.mode
    if mode == "off":
        raise SkipStage("graphs.mode is off")
    target = runtime.result("load-weights")
    if not isinstance(target, GraphTarget):
        raise SkipStage("the engine's model offers no decode step to capture in CUDA graphs")
    reason = target.graph_support()
    if reason is not None:
        raise SkipStage(reason)
    max_num_seqs = config.scheduler.max_num_seqs
    plan = plan_capture_sizes(config.graphs.capture_sizes, max_num_seqs)
    if plan.dropped:
        note(
            "dropped",
            f"{_sizes(plan.dropped)}: a step never has more than "
            f"scheduler.max_num_seqs={max_num_seqs} sequences",
        )
    sizes = target.prepare_graphs(plan.sizes)
    note("sizes", _sizes(sizes))
    if mode == "lazy":
        target.use_graphs(lazy=True)
        note("lazy", "each size is captured between steps, after the first step that needs it")
        return GraphsResult("lazy", sizes)
    captures = [target.capture_graph(size) for size in sorted(sizes, reverse=True)]
    target.use_graphs(lazy=False)
    note("capture_s", " ".join(f"{c.size}:{c.seconds:.2f}" for c in captures))
    failed = tuple(sorted(c.size for c in captures if not c.ok))
    if failed:
        first = next(c for c in captures if not c.ok)
        note("failed", f"{_sizes(failed)} run uncaptured ({first.error})")
    pool = target.graph_pool_bytes()
    note("pool_bytes", pool)
    note("device_bytes", max((c.device_bytes for c in captures), default=0))
    captured = tuple(sorted(c.size for c in captures if c.ok))
    return GraphsResult("eager", sizes, captured, failed, pool)


def _sizes(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))
