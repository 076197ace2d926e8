"""p2p-check: which GPUs can reach each other's memory; never on the critical path."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="p2p-check",
    hook="rt_p2p_check",
    needs=("workers",),
    where="ranks",
    background=True,
    description="GPU peer-access table, cached by GPU UUIDs and driver; skipped without CUDA",
)
