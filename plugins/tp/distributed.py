"""torch.distributed set-up shared by the driver (rank 0) and the worker ranks.

Rendezvous is ``env://`` (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK), so a
multi-node launch only has to set those variables. Besides the default group
(NCCL on GPU, gloo on CPU; the model's all-reduce and all-gather) every rank
creates two CPU (gloo) groups right after init, in the same order: ``control``
for startup agreements (KV block count) and ``broadcast`` for the step-metadata
channel. Separate groups let those stages run concurrently without their
collectives interleaving on one group.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
from rt.plugins.tp.weights_plan import cuda_present

# Collectives that wait longer than this fail instead of hanging forever.
COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def pick_device(rank: int) -> torch.device:
    # cuda_present() is what the prefetch decides by, so both pick the same files.
    if cuda_present() and torch.cuda.is_available():
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def pick_backend(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    backend: str,
    device: torch.device,
) -> dict[str, Any]:
    """Join the process group; return ``{"world": ..., "control": ..., "broadcast": ...}``."""
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=pick_backend(backend, device),
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return {
        "world": dist.group.WORLD,
        "control": dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT),
        "broadcast": dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT),
    }


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
