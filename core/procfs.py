"""What the kernel says about a process, from ``/proc`` (Linux)."""

from __future__ import annotations


def process_state(pid: int) -> str | None:
    """The state letter in ``/proc/PID/stat`` (R, S, D, T stopped, t traced, Z zombie,
    ...), or None where there is no such process. Raises OSError other than
    FileNotFoundError where /proc cannot be read (no /proc at all, say)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    # "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so the state is the
    # field after the last ")".
    fields = stat[stat.rfind(b")") + 1 :].split()
    return fields[0].decode() if fields else None
