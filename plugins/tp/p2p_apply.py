"""NCCL's peer-to-peer setting from the ``p2p-check`` result, before NCCL starts.

torch forms the NCCL communicator lazily, at the first collective on the default group
(``init_process_group`` gets no ``device_id``), and NCCL reads its environment once, then.
The first collective comes after ``kv-cache`` (graph capture and the warm-up request
need that stage; the compile stage's warm-up runs its collectives dry), so the
``kv-cache`` hook calls :func:`configure_nccl_p2p` first: on CUDA at TP >= 2 it waits
for the background ``p2p-check`` stage, the ranks swap what their tables say over the
``control`` group (gloo), and when a pair of a node's GPUs cannot reach each other every
rank of that node sets ``NCCL_P2P_DISABLE=1``. A setting the user made is kept.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from rt.core import note
from rt.core.p2p import (
    NCCL_P2P_VARIABLES,
    NcclP2PPlan,
    RankP2P,
    nccl_p2p_plan,
    wait_for_p2p_table,
)

log = logging.getLogger("rt.tp")
# The p2p-check stage bounds its own probes; this only keeps a wedged one from
# holding startup forever.
P2P_WAIT_TIMEOUT_S = 600.0

Gather = Callable[[RankP2P], list[RankP2P]]


def configure_nccl_p2p(
    config: Any,
    runtime: Any,
    *,
    gather: Gather | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> NcclP2PPlan | None:
    """Apply the node's NCCL P2P plan on this rank; None where NCCL is not in use.

    Every rank must call it at the same point (it runs a collective on the ``control``
    group). ``gather`` and ``environ`` are for tests: by default the ranks' views travel
    over the control group and the plan goes into ``os.environ``."""
    device = runtime.services.get("device")
    if getattr(device, "type", None) != "cuda" or runtime.world_size < 2:
        return None
    groups = runtime.services.get("process_groups") or {}
    if gather is None:
        if not _uses_nccl(groups.get("world")):
            return None
        gather = _gather_over(groups["control"], runtime.world_size)
    env = os.environ if environ is None else environ
    with runtime.timeline.span("nccl-p2p", "tp", kind="task") as span:
        t0 = time.monotonic()
        table, status = wait_for_p2p_table(runtime, P2P_WAIT_TIMEOUT_S)
        span.notes["waited_s"] = round(time.monotonic() - t0, 3)
        mine = RankP2P(
            socket.gethostname(),
            int(device.index or 0),
            table.blocked_pairs() if table is not None else None,
        )
        plan = nccl_p2p_plan(gather(mine), mine.host)
        span.notes["table"] = status
        span.notes["plan"] = plan.reason
        user = {k: env[k] for k in NCCL_P2P_VARIABLES if k in env}
        if user:
            span.notes["nccl"] = "kept " + " ".join(f"{k}={v}" for k, v in user.items())
        elif plan.env:
            env.update(plan.env)
            span.notes["nccl"] = " ".join(f"{k}={v}" for k, v in plan.env.items())
            log.warning(
                "rank %d: %s; NCCL runs without peer-to-peer transport (%s)",
                runtime.rank,
                plan.reason,
                span.notes["nccl"],
            )
        else:
            span.notes["nccl"] = "defaults"
    note("nccl_p2p", span.notes["nccl"])
    return plan


def _uses_nccl(group: Any) -> bool:
    if group is None:
        return False
    import torch.distributed as dist

    return dist.get_backend(group) == "nccl"


def _gather_over(group: Any, world_size: int) -> Gather:
    def gather(mine: RankP2P) -> list[RankP2P]:
        import torch.distributed as dist

        every: list[Any] = [None] * world_size
        dist.all_gather_object(every, mine, group=group)
        return list(every)

    return gather
