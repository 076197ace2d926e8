"""graph-capture: CUDA graphs for the configured batch sizes, eagerly or lazily."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="graph-capture",
    hook="rt_graph_capture",
    needs=("compile", "kv-cache"),
    where="ranks",
    description="CUDA graphs for configured sizes, or lazily on first use; skipped on CPU",
)
