"""CPU cores per rank, without importing torch (the weights plan needs it too)."""

from __future__ import annotations

from rt.core.host import usable_cores


def threads_per_rank(world_size: int) -> int:
    """Split the CPU cores between the ranks of this node, so they do not oversubscribe."""
    return max(1, usable_cores() // world_size)
