"""load-weights: every rank reads only its shard of the checkpoint."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="load-weights",
    hook="rt_load_weights",
    needs=("workers",),
    where="ranks",
    required=True,
    description="safetensors, each rank reads the slices it owns",
)
