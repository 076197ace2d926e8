"""Helpers for POSIX shared-memory segments that rt processes share (no torch).

Segments are named ``<prefix><creator pid>-<random>`` under ``/dev/shm`` so that a
later start can tell a leftover of a dead process from a live one's segment.
"""

from __future__ import annotations

import os

SHM_DIR = "/dev/shm"


def pid_alive(pid: int) -> bool:
    """False for a process that is gone or a zombie (exited, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
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
