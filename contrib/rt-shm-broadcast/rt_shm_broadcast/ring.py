"""A single-writer, multi-reader ring of fixed-size slots in POSIX shared memory.

Segment layout (every word a native, 8-byte aligned uint64)::

    control page (4096 bytes)
        word 0 magic | 1 layout | 2 slots | 3 frame bytes | 4 readers | 5 writer pid | 6 closed
        reader i: word 8 + 8*i = messages it has released, word 9 + 8*i = its pid
                  (one 64-byte line per reader, so readers never write the same line)
    slot k at 4096 + k * stride: word 0 = the sequence number published in it (n + 1
        for message n), then the frame from byte 64

Message n goes to slot ``n % slots``. The writer first waits until every reader
has released message ``n - slots`` (so it never overwrites a slot in use), writes
the frame, and stores the sequence number last. A reader spins until its slot's
number is ``n + 1`` and decodes the frame in place (the step's arrays are views of the
slot); it releases message ``n`` only when it asks for message ``n + 1``, so a step
stays intact while the rank runs it.
x86-64 keeps stores in order and an aligned 8-byte store through a ``memoryview``
is one instruction, so a reader that sees the number sees the whole frame. In the
fast path nothing makes a syscall: waiting spins, then yields, then sleeps with
back-off, and only the slow path checks that the other side is still alive.
"""

from __future__ import annotations

import atexit
import mmap
import os
import time
from collections.abc import Callable

from rt.core import shm
from rt.core.errors import EngineDead, RtError
from rt.core.host import usable_cores

SHM_DIR = shm.SHM_DIR
PREFIX = "rt-shm-"
MAGIC = 0x5254_5348_4D42_5231  # "RTSHMBR1"
LAYOUT = 1
CONTROL_BYTES = 4096
SLOT_HEADER = 64
MAX_READERS = (CONTROL_BYTES // 64) - 1
SPIN_CHECKS = 2000  # ~50-100 us of pure spinning before yielding the core
# When every rank of the ring has a core of its own, a reader spins (no syscall) for
# ~1 ms: a frame that arrives while it is in the sched_yield phase below takes ~10 us
# longer to decode (each syscall costs the process its warm caches and predictors).
SPIN_CHECKS_OWN_CORE = 30000
YIELD_S = 0.002  # then sched_yield for this long
MAX_SLEEP_S = 0.0005  # then sleep, doubling up to this
# A wait this long means an idle server, not a step on its way: sleep up to IDLE_SLEEP_S
# so idle ranks cost ~1% of a core, not ~15% (TP=3, measured), for at most 10 ms more on
# the first step after the pause.
IDLE_AFTER_S = 1.0
IDLE_SLEEP_S = 0.01
LIVENESS_S = 0.25  # how often a waiting side checks that its peers are alive

_W_MAGIC, _W_LAYOUT, _W_SLOTS, _W_FRAME, _W_READERS, _W_PID, _W_CLOSED = range(7)
_owned: set[str] = set()  # segments this process created and has not unlinked yet


class ChannelClosed(RtError):
    """The other side closed the channel."""


def remove_stale(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink ``rt-shm-<pid>-*`` segments whose creating process is dead."""
    return shm.remove_stale(PREFIX, shm_dir)


def _unlink_owned() -> None:
    for name in list(_owned):
        unlink(name)


def unlink(name: str, shm_dir: str = SHM_DIR) -> None:
    _owned.discard(name)
    try:
        os.unlink(os.path.join(shm_dir, name))
    except FileNotFoundError:
        pass


class Ring:
    """One process's mapping of a ring segment: the writer's or one reader's."""

    def __init__(self, name: str, mm: mmap.mmap, reader: int | None, shm_dir: str = SHM_DIR):
        self.name = name
        self.shm_dir = shm_dir
        self._mm = mm
        self.words = memoryview(mm).cast("Q")
        w = self.words
        if w[_W_MAGIC] != MAGIC or w[_W_LAYOUT] != LAYOUT:
            raise RtError(f"shared-memory segment {name} is not an rt-shm-broadcast ring")
        self.num_slots = w[_W_SLOTS]
        self.frame_bytes = w[_W_FRAME]
        self.num_readers = w[_W_READERS]
        stride = SLOT_HEADER + self.frame_bytes
        self._seq_word = [(CONTROL_BYTES + k * stride) // 8 for k in range(self.num_slots)]
        data = memoryview(mm)
        self.slots = [
            data[CONTROL_BYTES + k * stride + SLOT_HEADER : CONTROL_BYTES + (k + 1) * stride]
            for k in range(self.num_slots)
        ]
        self._ack_words = [8 + 8 * i for i in range(self.num_readers)]
        self.reader = reader
        self.count = 0  # messages published (writer) or received (this reader)
        self._free_until = self.num_slots  # writer: messages it may publish without checking
        own_core = self.num_readers + 1 <= usable_cores()
        self._spin_checks = SPIN_CHECKS_OWN_CORE if own_core else SPIN_CHECKS
        if reader is not None:
            w[9 + 8 * reader] = os.getpid()

    # -- set-up -------------------------------------------------------------

    @classmethod
    def create(
        cls, num_readers: int, num_slots: int, frame_bytes: int, shm_dir: str = SHM_DIR
    ) -> Ring:
        if not 0 < num_readers <= MAX_READERS:
            raise RtError(
                f"shm-broadcast supports 1..{MAX_READERS} readers on a node, not {num_readers}"
            )
        frame_bytes = -(-frame_bytes // 64) * 64
        size = CONTROL_BYTES + num_slots * (SLOT_HEADER + frame_bytes)
        # reserved whole: a full or read-only /dev/shm is ShmUnavailable here, not a
        # SIGBUS at the first frame past its room
        name, fd = shm.make_segment(PREFIX, size, shm_dir)
        _owned.add(name)
        if len(_owned) == 1:
            atexit.register(_unlink_owned)
        try:
            mm = mmap.mmap(fd, size)
        except BaseException:
            unlink(name, shm_dir)
            raise
        finally:
            os.close(fd)
        w = memoryview(mm).cast("Q")
        w[_W_LAYOUT], w[_W_SLOTS], w[_W_FRAME] = LAYOUT, num_slots, frame_bytes
        w[_W_READERS], w[_W_PID] = num_readers, os.getpid()
        w[_W_MAGIC] = MAGIC  # last: the header is complete
        w.release()
        return cls(name, mm, None, shm_dir)

    @classmethod
    def attach(cls, name: str, reader: int, shm_dir: str = SHM_DIR) -> Ring:
        path = os.path.join(shm_dir, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RtError(f"shared-memory segment {path} is gone: the driver exited") from None
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(name, mm, reader, shm_dir)

    # -- writer ---------------------------------------------------------------

    def publish(self, write: Callable[[memoryview], int]) -> int:
        """Wait for the next slot to be free, let ``write`` fill it, publish it."""
        n = self.count
        if n >= self._free_until:
            self._wait_free(n)
        k = n % self.num_slots
        length = write(self.slots[k])
        self.words[self._seq_word[k]] = n + 1  # the last store: publishes the frame
        self.count = n + 1
        return length

    def _min_ack(self) -> int:
        w = self.words
        return min(w[i] for i in self._ack_words)

    def _wait_free(self, n: int) -> None:
        need = n - self.num_slots + 1  # every reader must have released message n - slots
        for _ in range(SPIN_CHECKS // 8):
            low = self._min_ack()
            if low >= need:
                self._free_until = low + self.num_slots
                return
        self._wait(lambda: self._min_ack() >= need, self._check_readers)
        self._free_until = self._min_ack() + self.num_slots

    def _check_readers(self) -> None:
        w = self.words
        if w[_W_CLOSED]:
            raise ChannelClosed("the shm-broadcast channel was closed while sending")
        for i in range(self.num_readers):
            pid = w[9 + 8 * i]
            if pid and not shm.pid_alive(pid):
                raise EngineDead(
                    f"shm-broadcast reader {i} (pid {pid}) died without reading step "
                    f"{w[8 + 8 * i]}: a worker rank is gone"
                )

    # -- reader ---------------------------------------------------------------

    def receive(self, read: Callable[[memoryview], object]) -> object:
        """Release the previous message, wait for the next, let ``read`` decode it.

        What ``read`` returns may be views of the slot: valid until the next call."""
        n = self.count
        k = n % self.num_slots
        word, w = self._seq_word[k], self.words
        w[8 + 8 * self.reader] = n  # release message n - 1: the writer may reuse its slot
        if w[word] != n + 1:
            for _ in range(self._spin_checks):
                if w[word] == n + 1:
                    break
            else:
                self._wait(lambda: w[word] == n + 1, self._check_writer)
        message = read(self.slots[k])
        assert w[word] == n + 1, "the writer overwrote a slot before every reader released it"
        self.count = n + 1
        return message

    def _check_writer(self) -> None:
        w = self.words
        if w[_W_CLOSED]:
            raise ChannelClosed("the driver closed the shm-broadcast channel")
        if not shm.pid_alive(w[_W_PID]):
            raise EngineDead(f"the driver (pid {w[_W_PID]}) of the shm-broadcast channel died")

    # -- both -------------------------------------------------------------------

    @staticmethod
    def _wait(done: Callable[[], bool], check: Callable[[], None]) -> None:
        """Yield the core, then sleep with back-off; check the peers now and then."""
        start = time.monotonic()
        next_check = start + LIVENESS_S
        sleep = 0.00002
        while not done():
            now = time.monotonic()
            if now - start < YIELD_S:
                os.sched_yield()
                continue
            if now >= next_check:
                check()
                next_check = now + LIVENESS_S
            time.sleep(sleep)
            sleep = min(sleep * 2, IDLE_SLEEP_S if now - start > IDLE_AFTER_S else MAX_SLEEP_S)

    def close(self) -> None:
        """Writer: mark closed and unlink the name. Readers: nothing to release (the
        mapping goes with the process; unmapping here could pull it from under a
        thread still inside ``receive``)."""
        if self.reader is None:
            self.words[_W_CLOSED] = 1
            unlink(self.name, self.shm_dir)

    def unlink_name(self) -> None:
        """Writer: remove the name once every reader has mapped the segment, so no
        exit path (even SIGKILL of the driver) can leave it behind in /dev/shm."""
        if self.reader is None:
            unlink(self.name, self.shm_dir)
