"""Which ranks are held still, from /proc (plugins/tp/held_ranks.py); the server-level
behaviour is tests/http/test_faults.py::test_a_stopped_rank_fails_the_engine_naming_that_rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rt.core.procfs import process_state
from rt.plugins.tp.held_ranks import held_ranks


def _wait_state(pid: int, want: str) -> str | None:
    deadline = time.monotonic() + 10
    while (state := process_state(pid)) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return state


def test_a_stopped_process_is_named_and_a_running_one_is_not():
    # A command name with spaces and parentheses, as /proc/PID/stat shows it unescaped.
    code = "open('/proc/self/comm', 'w').write('r) (x y'); import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert _wait_state(child.pid, "S") == "S"
        assert held_ranks({1: child.pid, 2: os.getpid()}) is None
        os.kill(child.pid, signal.SIGSTOP)
        assert _wait_state(child.pid, "T") == "T"
        assert held_ranks({2: os.getpid(), 1: child.pid}) == (
            f"after rank 1 (pid {child.pid}) was stopped by a signal (SIGSTOP or ^Z) "
            "and the others timed out waiting for it"
        )
    finally:
        child.kill()
        child.wait()
    assert process_state(child.pid) is None  # reaped: no such process
    assert held_ranks({1: child.pid}) is None
