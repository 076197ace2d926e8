"""``ShmBroadcastChannel``: the pickle-free metadata channel.

Ranks on the driver's node read a shared-memory ring (``ring.py``); ranks on other
nodes get the same fixed-size frame with one ``torch.distributed.broadcast`` of a
uint8 tensor over a gloo group of the driver and those ranks (no size message). When
``/dev/shm`` cannot hold the ring, every rank gets the frame that way.
Both carry frames of the layout in ``codec.py``.

Set-up (every rank, once, over the gloo ``broadcast`` group): gather each rank's
hostname and pid; the driver removes stale segments, creates the ring for the
ranks that share its hostname and broadcasts the plan (segment name, readers,
remote ranks, frame size); local ranks attach, remote ranks join the gloo subgroup.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import attrs
from rt.core.channel import Message
from rt.core.errors import ConfigError
from rt.core.shm import ShmUnavailable

from rt_shm_broadcast.codec import FRAME_ENV, Encoder, FrameTooLarge, Spill, encode_spill
from rt_shm_broadcast.decode import Decoder
from rt_shm_broadcast.ring import ChannelClosed, Ring, remove_stale

log = logging.getLogger("rt.shm_broadcast")

SLOTS_ENV = "RT_SHM_BROADCAST_SLOTS"
DEFAULT_FRAME_BYTES = 1 << 20  # 256 seqs with 1k block ids each, with room to spare
DEFAULT_SLOTS = 4


def _env_int(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise ConfigError(f"{name}={raw!r}: give an integer >= {low}")
    return value


@attrs.frozen
class Plan:
    """What the driver decides at set-up and every rank receives."""

    segment: str | None
    local: tuple[int, ...]  # ranks that read the ring, in reader-index order
    remote: tuple[int, ...]  # ranks that receive the frame over gloo
    frame_bytes: int
    slots: int
    stale_removed: tuple[str, ...] = ()
    shm_problem: str | None = None  # why the local ranks read no ring (a full /dev/shm)


class ShmBroadcastChannel:
    name = "shm-broadcast"

    def __init__(
        self, rank: int, plan: Plan, ring: Ring | None, remote_group: Any, group: Any = None
    ):
        self.rank = rank
        self.plan = plan
        self._ring = ring
        self._group = remote_group
        self._all = group  # every rank: a frame too large for a slot spills over it
        self._lock = threading.Lock()  # send and close may come from different threads
        self._closed = False
        self._encoder = Encoder() if rank == 0 else None
        self._decoder = Decoder() if rank != 0 else None
        self._tensor = self._view = None
        if remote_group is not None and (rank == 0 or rank in plan.remote):
            import torch

            self._tensor = torch.zeros(plan.frame_bytes, dtype=torch.uint8)
            self._view = memoryview(self._tensor.numpy())

    @classmethod
    def open(
        cls, group: Any, rank: int, world_size: int, hostname: str | None = None
    ) -> ShmBroadcastChannel:
        """Collective over ``group`` (every rank calls it). ``hostname`` overrides
        ``socket.gethostname()``; tests use it to exercise the cross-node path."""
        import torch.distributed as dist

        infos: list[Any] = [None] * world_size
        dist.all_gather_object(infos, (hostname or socket.gethostname(), os.getpid()), group=group)
        box: list[Any] = [None]
        ring = None
        if rank == 0:
            local = tuple(r for r in range(1, world_size) if infos[r][0] == infos[0][0])
            remote = tuple(r for r in range(1, world_size) if r not in local)
            frame = _env_int(FRAME_ENV, DEFAULT_FRAME_BYTES, 4096)
            slots = _env_int(SLOTS_ENV, DEFAULT_SLOTS, 2)
            stale = tuple(remove_stale())
            problem = None
            if local:
                try:
                    ring = Ring.create(len(local), slots, frame)
                    frame = ring.frame_bytes
                except ShmUnavailable as e:  # the frame goes over gloo to every rank instead
                    local, remote, problem = (), tuple(range(1, world_size)), str(e)
                    log.warning("shm-broadcast sends step metadata over gloo: %s", e)
            box[0] = Plan(ring.name if ring else None, local, remote, frame, slots, stale, problem)
        dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
        plan: Plan = box[0]
        sub = None
        if plan.remote:
            # Every rank of the world takes part in creating a group, members or not.
            members = [dist.get_global_rank(group, r) for r in (0, *plan.remote)]
            sub = dist.new_group(members, backend="gloo")
        if rank in plan.local:
            ring = Ring.attach(plan.segment, plan.local.index(rank))
        return cls(rank, plan, ring, sub, group)

    # -- MetadataChannel ---------------------------------------------------------

    def send(self, message: Message) -> None:
        with self._lock:
            if self._closed:
                raise ChannelClosed("send on a closed shm-broadcast channel")
            encode = self._encoder.encode
            try:
                self._send_frame(lambda buf: encode(message, buf))
            except FrameTooLarge as e:
                if self._all is None:
                    raise
                self._spill(message, e.need)

    def _send_frame(self, write: Callable[[Any], int]) -> None:
        if self._ring is not None:
            ring = self._ring
            length = ring.publish(write)
            if self._view is not None:  # the same frame for the ranks on other nodes
                self._view[:length] = ring.slots[(ring.count - 1) % ring.num_slots][:length]
        else:
            write(self._view)
        if self._tensor is not None:
            import torch.distributed as dist

            dist.broadcast(
                self._tensor, src=dist.get_global_rank(self._group, 0), group=self._group
            )

    def _spill(self, message: Message, need: int) -> None:
        """A step larger than a slot (a batch of long block tables or prompts, past what
        the frame size was chosen for): a spill frame tells every reader its length,
        then the frame itself goes to every rank in one gloo broadcast. Costs one
        wake-up per rank more than a ring frame; rare steps only."""
        import torch
        import torch.distributed as dist

        big = torch.empty(need, dtype=torch.uint8)
        length = self._encoder.encode(message, memoryview(big.numpy()))
        self._send_frame(lambda buf: encode_spill(length, buf))
        dist.broadcast(big[:length], src=dist.get_global_rank(self._all, 0), group=self._all)

    def recv(self) -> Message:
        if self._ring is not None:
            message = self._ring.receive(self._decoder.decode)
        else:
            import torch.distributed as dist

            src = dist.get_global_rank(self._group, 0)
            dist.broadcast(self._tensor, src=src, group=self._group)
            message = self._decoder.decode(self._view)
        if isinstance(message, Spill):
            return self._receive_spilled(message.length)
        return message

    def _receive_spilled(self, length: int) -> Message:
        import torch
        import torch.distributed as dist

        big = torch.empty(length, dtype=torch.uint8)
        dist.broadcast(big, src=dist.get_global_rank(self._all, 0), group=self._all)
        view = memoryview(big.numpy())
        try:  # the step's arrays view ``big``, which they keep alive
            return self._decoder.decode(view)
        finally:
            self._decoder.forget(view)

    def close(self) -> None:
        # No lock: a send blocked on a dead reader holds it; the ring's closed flag
        # is what makes that send give up.
        self._closed = True
        if self._ring is not None:
            self._ring.close()

    # -- extras --------------------------------------------------------------------

    @property
    def segment(self) -> str | None:
        return self.plan.segment

    def unlink_name(self) -> None:
        """Driver: drop the /dev/shm name once every local reader has attached."""
        if self._ring is not None:
            self._ring.unlink_name()
