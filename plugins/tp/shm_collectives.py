"""All-reduce and all-gather through shared memory for the CPU ranks of one node.

Why: a gloo collective over loopback TCP costs each rank a sleep and a wake-up. On a
busy or oversubscribed machine (TP=3 on 2 cores) a wake-up can wait for a scheduler
tick, ~4 ms, and a decode step of the default model runs 61 collectives: measured here,
4.3 ms per all-reduce at TP=3 with gloo. In shared memory a rank copies its tensor into
its own slot, publishes a call number, and waits for the other ranks' numbers by
spinning, then yielding its core (so a rank still computing on the same core runs at
once), then sleeping. Then every rank sums (or concatenates) all the slots itself, in
rank order, so every rank computes the same bits.

Segment layout::

    control page (4096 bytes): rank i's 64-byte line at 64 * i:
        word 0 = calls it has published, word 1 = its pid
    data: 2 buffers x world_size slots x slot_bytes

Call ``s`` (counted from 1) uses buffer ``s % 2``. A rank writes its slot of that buffer
only after every rank published call ``s - 1``, which each did after it had finished
reading call ``s - 2``, the last user of the buffer. x86-64 keeps stores in order and
a published number is one aligned 8-byte store, so a rank that sees the number sees the
data; on other architectures the engine keeps gloo. Tensors larger than a slot go
through gloo too.
"""

from __future__ import annotations

import logging
import mmap
import os
import platform
import socket
import time
from typing import Any

import torch
from rt.core.errors import EngineDead, RtError
from rt.core.shm import SHM_DIR, ShmUnavailable, make_segment, pid_alive, remove_stale

log = logging.getLogger("rt.tp")

PREFIX = "rt-tp-"
CONTROL_BYTES = 4096
MAX_RANKS = CONTROL_BYTES // 64
DEFAULT_SLOT_BYTES = 4 << 20  # a [1820, 576] float32 activation: any decode batch
SPINS = 200  # checks before yielding the core (~10-20 us)
YIELD_S = 0.005  # then sched_yield for this long
MAX_SLEEP_S = 0.0005  # then sleep, doubling up to this
LIVENESS_S = 0.25  # how often a waiting rank checks that the others are alive
DEFAULT_TIMEOUT_S = 120.0  # parallel.collective_timeout_s, as the gloo groups' collectives


def supported(device: torch.device) -> str | None:
    """Why this process cannot use shared-memory collectives, or None if it can."""
    if device.type != "cpu":
        return f"the ranks run on {device.type}, where the backend's own collectives are used"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} may reorder stores; the ranks use gloo"
    if not os.path.isdir(SHM_DIR):
        return f"{SHM_DIR} does not exist"
    return None


class ShmCollectives:
    """One rank's mapping of the segment. Use :func:`open_shm_collectives` to make one."""

    def __init__(
        self,
        mm: mmap.mmap,
        rank: int,
        world_size: int,
        slot_bytes: int,
        group: Any,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.rank, self.world_size, self.slot_bytes = rank, world_size, slot_bytes
        self.timeout_s = timeout_s
        self._mm = mm
        self._group = group  # gloo fallback for tensors larger than a slot
        self._words = memoryview(mm)[:CONTROL_BYTES].cast("Q")
        self._mine = 8 * rank
        self._others = [8 * r for r in range(world_size) if r != rank]
        self._calls = 0
        self._data = torch.frombuffer(
            mm, dtype=torch.uint8, offset=CONTROL_BYTES, count=2 * world_size * slot_bytes
        ).view(2, world_size, slot_bytes)
        self._views: dict[torch.dtype, torch.Tensor] = {}
        self._words[self._mine + 1] = os.getpid()

    def _slots(self, dtype: torch.dtype) -> torch.Tensor:
        """``[2, world_size, slot_bytes // itemsize]`` view of the data in ``dtype``."""
        view = self._views.get(dtype)
        if view is None:
            view = self._views[dtype] = self._data.view(dtype)
        return view

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` (contiguous) over the ranks, in place; returns ``x``."""
        if x.numel() * x.element_size() > self.slot_bytes:
            import torch.distributed as dist

            dist.all_reduce(x, group=self._group)
            return x
        flat = x.view(-1)
        slots = self._publish(flat)  # [world, n]
        torch.sum(slots, dim=0, out=flat)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along the last dim, in rank order."""
        x = x.contiguous()
        if x.numel() * x.element_size() > self.slot_bytes:
            import torch.distributed as dist

            parts = [torch.empty_like(x) for _ in range(self.world_size)]
            dist.all_gather(parts, x, group=self._group)
            return torch.cat(parts, dim=-1)
        slots = self._publish(x.view(-1))  # [world, n]
        return torch.cat([s.view(x.shape) for s in slots], dim=-1)

    def _publish(self, flat: torch.Tensor) -> torch.Tensor:
        """Copy ``flat`` into this rank's slot, publish, wait for every rank; return the
        ``[world, n]`` slots of this call (valid until the call after next)."""
        self._calls += 1
        call = self._calls
        slots = self._slots(flat.dtype)[call % 2, :, : flat.numel()]
        slots[self.rank].copy_(flat)
        self._words[self._mine] = call  # the last store: publishes the slot
        words = self._words
        for w in self._others:
            if words[w] < call:
                for _ in range(SPINS):
                    if words[w] >= call:
                        break
                else:
                    self._wait(w, call)
        return slots

    def _wait(self, word: int, call: int) -> None:
        words = self._words
        start = time.monotonic()
        next_check = start + LIVENESS_S
        sleep = 0.00002
        while words[word] < call:
            now = time.monotonic()
            if now - start < YIELD_S:
                os.sched_yield()
                continue
            if now >= next_check:
                self._check_alive(word // 8, call, now - start)
                next_check = now + LIVENESS_S
            time.sleep(sleep)
            sleep = min(sleep * 2, MAX_SLEEP_S)

    def _check_alive(self, rank: int, call: int, waited: float) -> None:
        pid = self._words[8 * rank + 1]
        if pid and not pid_alive(pid):
            raise EngineDead(
                f"rank {rank} (pid {pid}) died: rank {self.rank} waited for it in "
                f"shared-memory collective {call}"
            )
        if waited > self.timeout_s:
            raise EngineDead(
                f"rank {rank} did not reach shared-memory collective {call} within "
                f"{self.timeout_s:g} s (rank {self.rank} waited)"
            )


def _create(size: int) -> tuple[str | None, str | None]:
    """Rank 0: make and reserve the segment; (its name, None) or (None, why not)."""
    try:
        name, fd = make_segment(PREFIX, size)
    except ShmUnavailable as e:
        log.warning("the TP ranks use gloo collectives: %s", e)
        return None, str(e)
    os.close(fd)
    return name, None


def open_shm_collectives(
    rank: int,
    world_size: int,
    device: torch.device,
    group: Any,
    slot_bytes: int = DEFAULT_SLOT_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[ShmCollectives | None, str]:
    """Collective over the gloo ``group`` (every rank calls it): map one segment for
    the ranks when all of them share this node and can use it. Returns the
    collectives (None: use the process group's) and why, for the timeline.

    Two gloo calls, each a wake-up per rank on a busy node: rank 0 makes the segment
    first and its name travels with every rank's host in one exchange; one barrier
    after every rank mapped it and wrote its pid lets rank 0 drop the name."""
    import torch.distributed as dist

    why = supported(device)
    size = CONTROL_BYTES + 2 * world_size * slot_bytes
    made: tuple[str | None, str | None] = (None, None)  # rank 0: (name, why not made)
    if rank == 0 and why is None and world_size <= MAX_RANKS:
        remove_stale(PREFIX)
        made = _create(size)
    infos: list[Any] = [None] * world_size
    dist.all_gather_object(infos, (socket.gethostname(), why, made), group=group)
    name, problem = infos[0][2]
    refusal = _refusal(infos, world_size) or problem
    if refusal is not None:
        if rank == 0 and name is not None:
            os.unlink(os.path.join(SHM_DIR, name))
        return None, refusal
    path = os.path.join(SHM_DIR, name)
    comm = None
    try:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RtError(f"shared-memory segment {path} vanished during set-up") from None
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        # writes this rank's pid, which the others' liveness checks read
        comm = ShmCollectives(mm, rank, world_size, slot_bytes, dist.group.WORLD, timeout_s)
    finally:
        # Every rank has mapped it (or failed) after this barrier: drop the name so no
        # exit path, SIGKILL included, can leave the segment behind.
        dist.barrier(group=group)
        if rank == 0:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return comm, f"shared memory, {slot_bytes >> 20} MiB slots"


def _refusal(infos: list[Any], world_size: int) -> str | None:
    """Why the ranks (``(host, why not, _)`` each) cannot share a segment, or None."""
    reasons = [f"rank {r}: {w}" for r, (_, w, _) in enumerate(infos) if w]
    if reasons:
        return reasons[0]
    if len({host for host, _, _ in infos}) > 1:
        return "the ranks span several nodes"
    if world_size > MAX_RANKS:
        return f"more than {MAX_RANKS} ranks on a node"
    return None
