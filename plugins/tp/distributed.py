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
from rt.core.errors import ConfigError
from rt.core.host import cpu_model
from rt.plugins.tp.device_plan import no_cuda_message

# Rendezvous and group set-up: every rank must have joined within this. The groups'
# collectives then get ``parallel.collective_timeout_s`` (set after set-up, so a short
# collective timeout never races the ranks' staggered arrival).
RENDEZVOUS_TIMEOUT = timedelta(seconds=120)
DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0


def resolve_device_type(requested: str) -> str:
    """``parallel.device`` as "cpu" or "cuda": ``auto`` is CUDA when torch finds a usable
    device; ``cuda`` without one is a ConfigError saying why and what to do.

    (``is_available`` and ``device_count`` do not create a CUDA context; ranks are
    forked from a forkserver that never touches CUDA, so asking here is safe.)"""
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise ConfigError(no_cuda_message(torch.__version__, torch.version.cuda))
    return "cpu"


def pick_device(rank: int, requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """This rank's device. ``local_rank``: its index among the ranks on this node (the
    driver starts ranks 0..local-1, so it is the rank there); None for a rank started
    with ``rt worker``, which takes GPU ``rank % count``.

    A local rank past the GPUs this process sees is a ConfigError: two ranks on one
    GPU would share its memory and hang or fail inside NCCL.
    """
    if resolve_device_type(requested) == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank is None:
        return torch.device("cuda", rank % count)
    if local_rank >= count:
        raise ConfigError(
            f"rank {rank} is local rank {local_rank} on this node, which has {count} "
            f"visible GPU(s): each rank needs a GPU of its own; use --tp {count} (or "
            "parallel.local_ranks at most that), make more GPUs visible "
            "(CUDA_VISIBLE_DEVICES), or run on CPU with --device cpu"
        )
    return torch.device("cuda", local_rank)


def describe_device(device: torch.device) -> str:
    """For the timeline: ``cuda:1 (NVIDIA H100 80GB HBM3)`` or ``cpu (AMD EPYC 7B13)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({cpu_model()})"


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
