"""workers: start the tensor-parallel ranks and torch.distributed."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="workers",
    hook="rt_start_workers",
    needs=("preload", "model"),
    where="driver",
    required=True,
    description="spawn TP ranks, init torch.distributed (gloo on CPU, NCCL on GPU)",
)
