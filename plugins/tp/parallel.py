"""Where this rank sits in the tensor-parallel group, and the two collectives the layers use.

TP=1 never touches ``torch.distributed``: ``group`` is None and the collectives are
identities, so a single-process engine needs no process group at all.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch


@attrs.frozen
class ParallelContext:
    """One rank's view of the TP group.

    ``group`` is the ``torch.distributed`` process group the ranks share (None for TP=1,
    or the default group when the ranks were started with ``init_process_group``).
    """

    rank: int = attrs.field(default=0)
    world_size: int = attrs.field(default=1)
    group: object | None = None
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    # Shared-memory collectives for CPU ranks on one node (shm_collectives.py), used
    # instead of the group's when set.
    collectives: Any = None

    @world_size.validator
    def _check_world_size(self, attribute: attrs.Attribute, value: int) -> None:
        if value < 1:
            raise ValueError(f"world_size must be >= 1, got {value}")

    @rank.validator
    def _check_rank(self, attribute: attrs.Attribute, value: int) -> None:
        if not 0 <= value < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {value}")

    @classmethod
    def single(cls, device: torch.device | str = "cpu") -> ParallelContext:
        """The context of a one-rank engine."""
        return cls(rank=0, world_size=1, group=None, device=torch.device(device))

    @classmethod
    def from_distributed(cls, device: torch.device | str = "cpu") -> ParallelContext:
        """The context of this process in the already initialised default process group."""
        import torch.distributed as dist

        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            group=dist.group.WORLD,
            device=torch.device(device),
        )

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns ``x``."""
        if self.world_size > 1:
            if self.collectives is not None:
                return self.collectives.all_reduce(x)
            import torch.distributed as dist

            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dim, in rank order."""
        if self.world_size == 1:
            return x
        if self.collectives is not None:
            return self.collectives.all_gather_last_dim(x)
        import torch.distributed as dist

        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=-1)
