"""What the zygote forks for a command handed to it (``launch.py``): a nanny and a driver.

The **nanny** takes on the caller's standard streams, directory, umask, environment and
limits (``child.become_caller``), forks the **driver** and stays its parent: it
watches the caller's pipe (hung up: the caller died; the nanny sends the driver
SIGTERM, and SIGKILL ``GRACE_S`` later) and writes the driver's exit code to the
caller's status pipe. The driver runs the command as ``rt`` would (``rt.core.cli``),
with everything the zygote imported and preloaded already in memory, and times its
startup from the caller's launch.

Status pipe messages, one JSON object a line (each shorter than PIPE_BUF, so a line
arrives whole): ``{"driver": PID}`` once the driver accepts the command,
``{"declined": REASON}`` when its config turns the zygote off (the caller then runs the
command itself), ``{"exit": CODE}`` from the nanny when the driver has ended (-N: killed
by signal N).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rt.plugins.zygote.child import PR_SET_NAME, become_caller, fork_child, prctl, watch
from rt.plugins.zygote.launch import COMMANDS, command_of

# A driver whose caller died gets this long after SIGTERM to drain (server.shutdown_grace_s,
# 10 s by default) and stop its ranks.
GRACE_S = 30.0

# In a driver: the zygote it was forked from and the caller it serves ({} elsewhere).
HANDED_OFF: dict[str, int] = {}


def split_run_fds(request: dict[str, Any], fds: list[int]) -> tuple[dict[int, int], int, int]:
    """A run request's fds, in the order the caller sent them: its standard streams
    (those it has), the status pipe's write end, the life pipe's read end."""
    stdio = [i for i, present in enumerate(request["stdio"]) if present]
    if len(fds) != len(stdio) + 2:
        raise ValueError(f"a run request names {len(stdio) + 2} file descriptors; {len(fds)} came")
    return dict(zip(stdio, fds[: len(stdio)], strict=True)), fds[-2], fds[-1]


def _write(fd: int, message: dict[str, Any]) -> None:
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the caller is gone: its pipe's hang-up ends the driver


def run_command_nanny(request: dict[str, Any], fds: list[int], caller_pid: int) -> int:
    """The nanny's life: fork the driver, report its exit, stop it if the caller dies."""
    stdio, status, life = split_run_fds(request, fds)
    zygote = os.getppid()
    become_caller(request, stdio)
    prctl(PR_SET_NAME, b"rt-zygote-nanny")
    pid = fork_child(life, lambda: run_driver(request, status, caller_pid, zygote))
    code = watch(pid, life, GRACE_S)
    _write(status, {"exit": code})
    return 0


def declined(resolved: Any) -> str | None:
    """Why the command's own config does not want it run from the zygote, or None."""
    if resolved is None:
        return None  # a config that does not resolve: the CLI reports it, here as anywhere
    if resolved.command not in COMMANDS:
        return f"`rt {resolved.command}` is not run from a zygote"
    if resolved.base.zygote.use == "off":
        return "zygote.use = off"
    if "zygote" not in resolved.selection.names:
        return "the zygote plugin is not selected"
    return None


def run_driver(request: dict[str, Any], status: int, caller_pid: int, zygote: int) -> int:
    """Run ``rt ARGV`` in this process, or decline; returns the exit code."""
    from rt.core import cli
    from rt.core.timeline import process_start_time, set_launch_time

    set_launch_time(process_start_time(caller_pid))
    argv = [str(a) for a in request["argv"]]
    sys.argv = ["rt", *argv]
    prctl(PR_SET_NAME, f"rt {command_of(argv)}"[:15].encode())
    try:
        resolved = cli.resolve(argv)
    except Exception:
        resolved = None  # cli.main resolves again and reports the error to the caller
    reason = declined(resolved)
    if reason is not None:
        _write(status, {"declined": reason})
        return 0
    HANDED_OFF.update(zygote=zygote, caller=caller_pid)
    _write(status, {"driver": os.getpid()})
    os.close(status)  # the nanny's copy reports the exit
    return cli.main(argv, resolved)
