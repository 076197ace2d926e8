"""Helpers for POSIX shared-memory segments that rt processes share (no torch).

Segments are named ``<prefix><creator pid>-<random>`` under ``/dev/shm`` so that a
later start can tell a leftover of a dead process from a live one's segment.

A segment's pages are reserved when it is made (:func:`make_segment`): ``/dev/shm`` is a
tmpfs, often small (a container's default is 64 MiB), and a page touched past its room
is a SIGBUS that kills the process mid-step, where a reservation that does not fit is
an error its caller can turn into a fallback.
"""

from __future__ import annotations

import os

from rt.core.errors import RtError
from rt.core.procfs import process_state

SHM_DIR = "/dev/shm"
MIB = 1 << 20


class ShmUnavailable(RtError):
    """``/dev/shm`` cannot take a new segment (full, read-only, not this user's to
    write); the message says why and how to fix it. Callers fall back to gloo."""


FIX = (
    "give it more (docker run --shm-size=1g; on Kubernetes an emptyDir with "
    "medium: Memory mounted at /dev/shm)"
)


def make_segment(prefix: str, size: int, shm_dir: str = SHM_DIR) -> tuple[str, int]:
    """Create a segment of ``size`` bytes with every page reserved; returns its name
    and an open descriptor (the caller maps it, then closes it). ShmUnavailable, with
    nothing left behind, when ``shm_dir`` cannot take it."""
    name = segment_name(prefix)
    path = os.path.join(shm_dir, name)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except OSError as e:
        raise ShmUnavailable(
            f"cannot create a shared-memory segment in {shm_dir}: {e.strerror}; make it "
            "a writable tmpfs for this user"
        ) from None
    try:
        os.ftruncate(fd, size)
        reserve(fd, size, shm_dir)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return name, fd


def reserve(fd: int, size: int, shm_dir: str = SHM_DIR) -> None:
    """Allocate every page of the segment open at ``fd`` (``size`` bytes) now."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        try:
            st = os.statvfs(shm_dir)
            room = f" ({st.f_bavail * st.f_frsize / MIB:.0f} MiB free of {st.f_blocks * st.f_frsize / MIB:.0f} MiB)"
        except OSError:
            room = ""
        raise ShmUnavailable(
            f"{shm_dir} has no room for a {size / MIB:.1f} MiB shared-memory segment{room}: "
            f"{e.strerror}; {FIX}"
        ) from None


def pid_alive(pid: int) -> bool:
    """False for a process that is gone or a zombie (exited, not yet reaped)."""
    try:
        state = process_state(pid)
        return state is not None and state != "Z"
    except OSError:  # no /proc: signal 0 tells existence (zombies count as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def segment_name(prefix: str) -> str:
    return f"{prefix}{os.getpid()}-{os.urandom(4).hex()}"


def remove_stale(prefix: str, shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink ``<prefix><pid>-*`` segments whose creating process is dead; return them."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        pid = name[len(prefix) :].split("-", 1)[0]
        if not name.startswith(prefix) or not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
