"""The ``shm-broadcast`` plugin: builds :class:`ShmBroadcastChannel` for the
``metadata-broadcast`` stage and releases it at shutdown.

Its ``rt_metadata_broadcaster`` is a plain hookimpl (not ``trylast``), so once the
plugin is selected it takes over from the built-in ``object-list`` channel.
"""

from __future__ import annotations

from typing import Any

from rt.core import RtError, SkipStage, hookimpl, note
from rt.core.channel import ControlMessage, check_ping

SERVICE = "shm-broadcast"


def verify_round_trip(channel: Any, runtime: Any, group: Any) -> None:
    """The driver pings every rank over the channel; each rank checks the schema
    version and plugin set; the findings are gathered over ``group``."""
    import torch.distributed as dist

    plugins = tuple(runtime.selection.names)
    if runtime.rank == 0:
        channel.send(ControlMessage("ping", plugins=plugins))
        problem = None
    else:
        try:
            problem = check_ping(channel.recv(), plugins, runtime.rank)
        except RtError as e:
            problem = f"rank {runtime.rank} could not read the ping: {e}"
    problems: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(problems, problem, group=group)
    found = [p for p in problems if p]
    if found:
        raise RtError("shm-broadcast channel round trip failed: " + "; ".join(found))


@hookimpl
def rt_metadata_broadcaster(config: Any, runtime: Any) -> Any:
    if runtime.world_size == 1:
        raise SkipStage("TP=1: there is no other rank to send step metadata to")
    from rt_shm_broadcast.channel import ShmBroadcastChannel

    group = runtime.services["process_groups"]["broadcast"]
    channel = ShmBroadcastChannel.open(group, runtime.rank, runtime.world_size)
    runtime.services[SERVICE] = channel  # so rt_shutdown finds it even if startup fails
    verify_round_trip(channel, runtime, group)
    # Every local reader has mapped the ring (it read the ping): the name can go.
    channel.unlink_name()
    plan = channel.plan
    note("segment", plan.segment or "-")
    note("frame_bytes", plan.frame_bytes)
    note("slots", plan.slots)
    note("shm_ranks", len(plan.local))
    note("gloo_ranks", len(plan.remote))
    if plan.shm_problem:
        note("gloo_because", plan.shm_problem)
    if plan.stale_removed:
        note("stale_removed", ",".join(plan.stale_removed))
    return channel


@hookimpl(trylast=True)
def rt_shutdown(runtime: Any) -> None:
    """``trylast``: runs after the engine's shutdown has sent ranks the ``shutdown``
    message over this channel; then the ring is closed and its name unlinked."""
    channel = runtime.services.pop(SERVICE, None)
    if channel is not None:
        channel.close()
