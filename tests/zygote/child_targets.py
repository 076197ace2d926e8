"""What the probe's children run (importable by name in a child forked from the zygote)."""

from __future__ import annotations

import json
import os
import resource
import sys


def report(path: str) -> None:
    """Write what this process took from its caller, and say hello on its stdout."""
    with open("/proc/self/status") as f:
        umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    facts = {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "mark": os.environ.get("RT_TEST_MARK"),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "umask": umask,
        "affinity": sorted(os.sched_getaffinity(0)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
    }
    with open(path, "w") as f:
        json.dump(facts, f)
    print("hello from the child", flush=True)


def exit_with(code: int) -> None:
    sys.exit(code)
