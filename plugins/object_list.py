"""Built-in plugin ``object-list``: the baseline metadata channel.

``torch.distributed.broadcast_object_list`` over the CPU (gloo) ``broadcast``
group, as serving engines commonly do it: pickle, a size message and the payload.
It is what rt uses until a faster channel (``--plugins=shm-broadcast``) is
selected, and what ``rt bench broadcast`` measures the others against.
"""

from __future__ import annotations

from typing import Any

from rt.core import RtError, SkipStage, hookimpl, note
from rt.core.channel import ControlMessage, Message, check_ping


class ObjectListChannel:
    name = "object-list"

    def __init__(self, group: Any):
        import torch.distributed as dist

        self._dist = dist
        self._group = group
        self._src = dist.get_global_rank(group, 0) if group is not None else 0

    def send(self, message: Message) -> None:
        self._dist.broadcast_object_list([message], src=self._src, group=self._group)

    def recv(self) -> Message:
        box: list[Any] = [None]
        self._dist.broadcast_object_list(box, src=self._src, group=self._group)
        return box[0]

    def close(self) -> None:
        """Nothing to release: the process group belongs to the workers stage."""


def verify_round_trip(channel: Any, runtime: Any, group: Any) -> None:
    """Driver pings every rank over the channel; ranks report back what disagrees."""
    import torch.distributed as dist

    plugins = tuple(runtime.selection.names)
    if runtime.rank == 0:
        channel.send(ControlMessage("ping", plugins=plugins))
        problem = None
    else:
        problem = check_ping(channel.recv(), plugins, runtime.rank)
    problems: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(problems, problem, group=group)
    found = [p for p in problems if p]
    if found:
        raise RtError("metadata channel round trip failed: " + "; ".join(found))


@hookimpl(trylast=True)
def rt_metadata_broadcaster(runtime: Any) -> ObjectListChannel:
    if runtime.world_size == 1:
        raise SkipStage("TP=1: there is no other rank to send step metadata to")
    group = runtime.services["process_groups"]["broadcast"]
    channel = ObjectListChannel(group)
    verify_round_trip(channel, runtime, group)
    note("channel", channel.name)
    return channel
