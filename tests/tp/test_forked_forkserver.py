"""multiprocessing's forkserver, forked from a one-thread process without torch: it
forks the processes a forkserver context starts, and exits when its client does."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from rt.plugins.tp.forked_forkserver import can_fork

from tests.conftest import REPO

CLIENT = """
import json, multiprocessing as mp, os
from multiprocessing import forkserver
from rt.plugins.tp.forked_forkserver import start

how = start(["json"])
again = start(["json"])
with mp.get_context("forkserver").Pool(1) as pool:
    parent = pool.apply(os.getppid)
print(json.dumps({"how": how, "again": again, "parent": parent, "client": os.getpid(),
                  "server": forkserver._forkserver._forkserver_pid}))
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")  # exited, not yet reaped
    except FileNotFoundError:
        return True


def test_a_forked_server_forks_the_contexts_processes_and_exits_with_its_client():
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["how"] == "forked" and report["again"] == "already running"
    assert report["parent"] == report["server"] != report["client"]
    deadline = time.monotonic() + 10
    while not _gone(report["server"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(report["server"]), "the server outlived its only client"


def test_a_process_with_threads_or_torch_gets_a_spawned_server():
    import torch  # noqa: F401  (pytest's process has it, and may run threads)

    assert can_fork() in ("other threads run", "torch is imported")
