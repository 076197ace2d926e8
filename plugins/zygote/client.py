"""The caller's side: ask a zygote, and have multiprocessing's forkserver clients fork from it.

:func:`install` puts a :class:`ZygoteForkServer` where multiprocessing keeps its
forkserver. Everything that starts processes through the ``forkserver`` context (the
TP engine's ``WorkerGroup``, the ``preload-forkserver`` plugin, which then finds a
server running and starts none) then asks the zygote: ``Process``, its pipes and
sentinel, ``exitcode``, ``terminate`` and ``join`` work as with multiprocessing's own
server, since the zygote's nanny writes the same pid and exit status to the same
status pipe (see ``child.py``). A fork request the zygote cannot serve (gone,
crashed, stale since the caller asked) falls back to multiprocessing's forkserver,
started then, with a note on the span that asked.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
from multiprocessing import forkserver, resource_tracker
from typing import Any

from rt.plugins.zygote.fingerprint import installation
from rt.plugins.zygote.paths import ZygotePaths, folder_problem, socket_address
from rt.plugins.zygote.wire import foreign_peer, peer_credentials, recv_message, send_message

log = logging.getLogger("rt.zygote")

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


def hello(paths: ZygotePaths, caller: dict[str, Any]) -> int:
    """The pid of a zygote that is current for ``caller``; else ZygoteUnavailable."""
    reply = request(paths, {"op": "hello", "caller": caller})
    if not reply.get("ok"):
        raise ZygoteUnavailable(f"stale zygote pid {reply.get('pid')}: {reply.get('reason')}")
    return int(reply["pid"])


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


def _open_fd(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def fork_request(paths: ZygotePaths, caller: dict[str, Any], fds: list[int]) -> tuple[int, int]:
    """Ask the zygote for a child that becomes this process's; returns (status_r,
    data_w), as ``ForkServer.connect_to_new_process`` does."""
    resource_tracker.ensure_running()
    tracker = resource_tracker.getfd()
    stdio = [_open_fd(fd) for fd in (0, 1, 2)]
    status_r, status_w = os.pipe()
    data_r, data_w = os.pipe()
    message = {
        "op": "fork",
        "caller": caller,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "umask": _umask(),
        "rlimits": _rlimits(),
        "stdio": stdio,
        "tracker": tracker is not None,
        "inherited": len(fds),
    }
    sent = [fd for fd, present in zip((0, 1, 2), stdio, strict=True) if present]
    sent += [data_r, status_w, *([tracker] if tracker is not None else []), *fds]
    try:
        reply = request(paths, message, sent)
        if not reply.get("ok"):
            raise ZygoteUnavailable(f"zygote pid {reply.get('pid')} refused: {reply.get('reason')}")
    except BaseException:
        os.close(status_r)
        os.close(data_w)
        raise
    finally:
        os.close(data_r)
        os.close(status_w)
    return status_r, data_w


class ZygoteForkServer(forkserver.ForkServer):
    """multiprocessing's forkserver, served by a zygote (see the module's docstring)."""

    def __init__(self, paths: ZygotePaths, pid: int, caller: dict[str, Any]) -> None:
        super().__init__()
        self.paths = paths
        self.caller = caller
        self.zygote_pid = pid
        # What forked_forkserver.start() and ensure_running() callers look at: running.
        self._forkserver_pid = pid
        self._forkserver_address = str(paths.socket)
        self.fell_back: str | None = None

    def ensure_running(self) -> None:
        resource_tracker.ensure_running()  # the zygote runs on its own: nothing to start

    def set_forkserver_preload(self, modules_names: list[str]) -> None:
        super().set_forkserver_preload(modules_names)
        original = _ORIGINAL.get("set_forkserver_preload")
        if original is not None:  # for the server a fallback starts
            original(modules_names)

    def connect_to_new_process(self, fds: list[int]) -> tuple[int, int]:
        from rt.core.timeline import note

        try:
            pair = fork_request(self.paths, self.caller, list(fds))
        except ZygoteUnavailable as e:
            self.fell_back = e.reason
            uninstall()
            note("zygote", f"fell back to multiprocessing's forkserver: {e.reason}")
            log.warning("rt: the zygote did not fork a rank (%s); starting it without", e.reason)
            return forkserver.connect_to_new_process(fds)  # the original, restored
        note("ranks_from", f"zygote pid {self.zygote_pid}")
        return pair


_ORIGINAL: dict[str, Any] = {}
_LOCK = threading.Lock()


def installed() -> ZygoteForkServer | None:
    server = forkserver._forkserver
    return server if isinstance(server, ZygoteForkServer) else None


def install(paths: ZygotePaths, pid: int, caller: dict[str, Any]) -> ZygoteForkServer:
    """Make this process's forkserver clients ask the zygote ``pid``."""
    with _LOCK:
        if not _ORIGINAL:
            _ORIGINAL.update(
                server=forkserver._forkserver,
                ensure_running=forkserver.ensure_running,
                connect_to_new_process=forkserver.connect_to_new_process,
                set_forkserver_preload=forkserver.set_forkserver_preload,
            )
        server = ZygoteForkServer(paths, pid, caller)
        forkserver._forkserver = server
        forkserver.ensure_running = server.ensure_running
        forkserver.connect_to_new_process = server.connect_to_new_process
        forkserver.set_forkserver_preload = server.set_forkserver_preload
        return server


def uninstall() -> None:
    """Give multiprocessing its own forkserver back (processes already forked keep
    their zygote: their status pipes do not depend on it)."""
    with _LOCK:
        if not _ORIGINAL:
            return
        forkserver._forkserver = _ORIGINAL["server"]
        forkserver.ensure_running = _ORIGINAL["ensure_running"]
        forkserver.connect_to_new_process = _ORIGINAL["connect_to_new_process"]
        forkserver.set_forkserver_preload = _ORIGINAL["set_forkserver_preload"]
        _ORIGINAL.clear()


def caller_installation() -> dict[str, Any]:
    """This process's :func:`installation`, read once."""
    global _CALLER
    if _CALLER is None:
        _CALLER = installation()
    return _CALLER


_CALLER: dict[str, Any] | None = None
