"""Linux futexes on shared memory, through libc's ``syscall`` (no compiled code).

Why: a rank that waits for another in a shared-memory collective must give its core
away when the machine has fewer cores than ranks (TP=3 on 2 cores). ``sched_yield``
only offers the core to tasks queued on the same CPU, and a sleep wakes on a timer
tick; a futex puts the waiter to sleep in the kernel until the rank it waits for
publishes and wakes it, so the core goes at once to whichever rank still computes.

The words are 32-bit, in a ``MAP_SHARED`` mapping, so the futexes are the shared
kind (not ``FUTEX_PRIVATE_FLAG``): the kernel keys them by the mapped file and offset,
the same in every process.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform

SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98}
FUTEX_WAIT = 0
FUTEX_WAKE = 1
WAKE_ALL = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def unsupported() -> str | None:
    """Why futexes cannot be used in this process, or None."""
    if not os.uname().sysname == "Linux":
        return f"{os.uname().sysname} has no futexes"
    if platform.machine().lower() not in SYS_FUTEX:
        return f"no futex syscall number known for {platform.machine()}"
    return None


class Futexes:
    """Wait on and wake 32-bit words of one shared mapping, by byte offset.

    The mapping must outlive this object: it holds the mapping's address.
    """

    def __init__(self, mm: mmap.mmap):
        why = unsupported()
        if why:
            raise OSError(why)
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._nr = SYS_FUTEX[platform.machine().lower()]
        # The buffer export pins the mapping: mm.close() raises while this lives.
        self._base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        self._timeout = _Timespec()
        self._timeout_ref = ctypes.byref(self._timeout)

    def wait(self, offset: int, expected: int, timeout_s: float) -> bool:
        """Sleep while the word at ``offset`` holds ``expected`` (its low 32 bits), at
        most ``timeout_s``; False when the time ran out. A wake-up, a changed word or a
        signal returns True at once: the caller re-reads the word."""
        self._timeout.tv_sec = int(timeout_s)
        self._timeout.tv_nsec = int((timeout_s - int(timeout_s)) * 1e9)
        r = self._syscall(
            self._nr,
            ctypes.c_void_p(self._base + offset),
            FUTEX_WAIT,
            ctypes.c_uint32(expected & 0xFFFFFFFF),
            self._timeout_ref,
            None,
            0,
        )
        if r == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.ETIMEDOUT:
            return False
        if err in (errno.EAGAIN, errno.EINTR):
            return True
        raise OSError(err, f"futex wait: {os.strerror(err)}")

    def wake(self, offset: int) -> None:
        """Wake every process sleeping on the word at ``offset``."""
        self._syscall(
            self._nr, ctypes.c_void_p(self._base + offset), FUTEX_WAKE, WAKE_ALL, None, None, 0
        )
