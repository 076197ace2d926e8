"""The record every ``rt_p2p_check`` implementation returns."""

from __future__ import annotations

import attrs


@attrs.frozen
class P2PTable:
    """Which GPU pairs can access each other's memory directly.

    ``devices`` are GPU UUIDs in CUDA device order; ``access[i][j]`` tells whether
    device ``i`` can read device ``j``'s memory. ``source`` says how the table was
    obtained ("measured", "cache", "hardware-table:<name>").
    """

    devices: tuple[str, ...]
    access: tuple[tuple[bool, ...], ...]
    source: str

    def can_access(self, i: int, j: int) -> bool:
        return i == j or self.access[i][j]

    @property
    def all_pairs(self) -> bool:
        n = len(self.devices)
        return all(self.can_access(i, j) for i in range(n) for j in range(n))
