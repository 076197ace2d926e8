"""CPU cores per rank, without importing torch (the weights plan needs it too)."""

from __future__ import annotations

from rt.core.host import usable_cores


def threads_per_rank(world_size: int) -> int:
    """Split the CPU cores between the ranks of this node, so they do not oversubscribe."""
    return max(1, usable_cores() // world_size)


def decode_parts(world_size: int, device_type: str) -> int:
    """How many blocks each CPU weight is split into (see layers/cpu_layout.py): one per
    thread of the rank. GPU weights keep their checkpoint layout."""
    return threads_per_rank(world_size) if device_type == "cpu" else 1
