"""torch.distributed set-up shared by the driver (rank 0) and the worker ranks.

Rendezvous is a TCP store that rank 0 serves at MASTER_ADDR:MASTER_PORT (the
variables are set as ``env://`` would read them), so a multi-node launch only has to
agree on that address. Besides the default group
(NCCL on GPU, gloo on CPU; the model's all-reduce and all-gather) every rank
creates two CPU (gloo) groups right after init, in the same order: ``control``
for startup agreements (KV block count) and ``broadcast`` for the step-metadata
channel. Separate groups let those stages run concurrently without their
collectives interleaving on one group.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
from rt.plugins.tp.weights_plan import cuda_present

# Rendezvous and group set-up: every rank must have joined within this. The groups'
# collectives then get ``parallel.collective_timeout_s`` (set after set-up, so a short
# collective timeout never races the ranks' staggered arrival).
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)
DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0


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
    store_listener: socket.socket | None = None,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> dict[str, Any]:
    """Join the process group; return ``{"world": ..., "control": ..., "broadcast": ...}``.

    Rank 0 serves the rendezvous store. Given ``store_listener`` (a socket the driver
    bound to ``master_port`` and put in listening state before starting any rank), it
    serves on that socket, and takes it over. Why: a rank whose connection is refused
    because rank 0 is not listening yet backs off for ~0.5 s before retrying; forked
    from one forkserver, ranks 1..N-1 often get there first (``init_process_group`` took
    ~0.6 s at TP=3 where a listening socket made it ~20 ms).

    Every collective on the returned groups fails after ``collective_timeout_s``
    instead of hanging; an idle engine keeps its ranks' waits short with heartbeats.
    """
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    listen_fd = store_listener.detach() if rank == 0 and store_listener is not None else None
    store = dist.TCPStore(
        master_addr,
        master_port,
        world_size,
        is_master=rank == 0,
        timeout=RENDEZVOUS_TIMEOUT,
        master_listen_fd=listen_fd,
    )
    dist.init_process_group(
        backend=pick_backend(backend, device),
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=RENDEZVOUS_TIMEOUT,
    )
    groups = {
        "world": dist.group.WORLD,
        "control": dist.new_group(backend="gloo", timeout=RENDEZVOUS_TIMEOUT),
        "broadcast": dist.new_group(backend="gloo", timeout=RENDEZVOUS_TIMEOUT),
    }
    for group in groups.values():
        group.set_timeout(timedelta(seconds=collective_timeout_s))  # torch >= 2.6
    return groups


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
