"""Ranks that are alive but held still: why the others timed out.

To the ranks waiting for it in a collective, a rank that is stopped (SIGSTOP, ^Z sent to
its process group, a debugger that attached) looks like a hung one: after
``parallel.collective_timeout_s`` they fail, and the first of them to exit is the death
a client reads about: "rank 1 exited with code 1", which blames a rank that did nothing
wrong. The kernel knows better: ``/proc/PID/stat`` says which process is stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

from rt.core.procfs import process_state

# /proc/PID/stat states of a process that runs no code until someone lets it:
# T stopped by a signal, t stopped by a tracer (a debugger, strace).
_HELD = {"T": "stopped by a signal (SIGSTOP or ^Z)", "t": "stopped by a debugger or tracer"}


def _state(pid: int) -> str | None:
    try:
        return process_state(pid)
    except OSError:  # no /proc here: nothing to say
        return None


def held_ranks(pids: Mapping[int, int]) -> str | None:
    """What holds up the ranks of ``{rank: pid}`` that are held still, to follow
    "rank 1 exited with code 1", or None when none is."""
    held = [
        f"rank {rank} (pid {pid}) was {_HELD[state]}"
        for rank, pid in sorted(pids.items())
        if (state := _state(pid)) in _HELD
    ]
    if not held:
        return None
    return f"after {' and '.join(held)} and the others timed out waiting for it"
