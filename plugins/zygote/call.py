"""One request to this user's zygote, and what a caller sends of itself with a fork.

Light on purpose (the standard library, ``paths`` and ``wire``): the launcher imports
it on every ``rt serve`` and ``rt generate``, before anything else.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
from typing import Any

from rt.plugins.zygote.launch import FORWARDED
from rt.plugins.zygote.paths import ZygotePaths, folder_problem, socket_address
from rt.plugins.zygote.wire import foreign_peer, peer_credentials, recv_message, send_message

CONNECT_TIMEOUT_S = 10.0


class ZygoteUnavailable(Exception):
    """No zygote answered, or it refused: ``reason`` says which, in words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def request(
    paths: ZygotePaths,
    message: dict[str, Any],
    fds: list[int] | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> dict[str, Any]:
    """Send one request to the zygote of ``paths`` and return its reply."""
    problem = folder_problem(paths.folder)
    if problem is not None:
        raise ZygoteUnavailable(f"no zygote: {problem}")
    if not os.path.lexists(paths.socket):
        raise ZygoteUnavailable(f"no zygote runs for {paths.folder.parent}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with socket_address(paths.socket) as address:
                sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            raise ZygoteUnavailable(
                f"nothing answers at {paths.socket}: the zygote died (`rt zygote start` "
                "starts another)"
            ) from None
        except OSError as e:
            raise ZygoteUnavailable(f"cannot reach the zygote at {paths.socket}: {e}") from None
        foreign = foreign_peer(peer_credentials(sock))
        if foreign is not None:
            raise ZygoteUnavailable(f"the socket {paths.socket} is not this user's: {foreign}")
        try:
            send_message(sock, message, fds or ())
            reply, _ = recv_message(sock)
        except (OSError, EOFError, ValueError) as e:
            raise ZygoteUnavailable(f"the zygote did not answer: {type(e).__name__}: {e}") from None
    return reply


def _umask() -> int:
    """This process's umask, read without changing it (another thread may create files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _rlimits() -> dict[str, tuple[int, int]]:
    return {
        name: resource.getrlimit(getattr(resource, name))
        for name in dir(resource)
        if name.startswith("RLIMIT_")
    }


def ignored_signals() -> list[int]:
    """The signals a user or supervisor sends (those the launcher forwards) that this
    process ignores. A process keeps SIG_IGN across exec, and a child forked from the
    zygote must too: `nohup rt serve` ignores SIGHUP, a script's `rt serve &` SIGINT and
    SIGQUIT."""
    return [int(s) for s in FORWARDED if signal.getsignal(s) == signal.SIG_IGN]


def _affinity() -> list[int] | None:
    """The CPUs this process may run on (``taskset``, systemd's ``CPUAffinity=``)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _open_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def caller_state() -> tuple[dict[str, Any], list[int]]:
    """What a forked child takes on from this process (``child.become_caller``): its
    environment, directory, umask, limits, CPU affinity, nice value and ignored
    signals, and which standard streams it has; and
    those streams' fds, to send with the request."""
    stdio = [_open_fd(fd) for fd in (0, 1, 2)]
    state = {
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": _umask(),
        "rlimits": _rlimits(),
        "affinity": _affinity(),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "ignored_signals": ignored_signals(),
        "stdio": stdio,
    }
    return state, [fd for fd, present in zip((0, 1, 2), stdio, strict=True) if present]
