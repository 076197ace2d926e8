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
import threading
from multiprocessing import forkserver, resource_tracker
from typing import Any

from rt.plugins.zygote.call import ZygoteUnavailable, caller_state, request
from rt.plugins.zygote.installation import installation
from rt.plugins.zygote.paths import ZygotePaths

log = logging.getLogger("rt.zygote")


def hello(paths: ZygotePaths, caller: dict[str, Any]) -> int:
    """The pid of a zygote that is current for ``caller``; else ZygoteUnavailable."""
    reply = request(paths, {"op": "hello", "caller": caller})
    if not reply.get("ok"):
        raise ZygoteUnavailable(f"stale zygote pid {reply.get('pid')}: {reply.get('reason')}")
    return int(reply["pid"])


def fork_request(paths: ZygotePaths, caller: dict[str, Any], fds: list[int]) -> tuple[int, int]:
    """Ask the zygote for a child that becomes this process's; returns (status_r,
    data_w), as ``ForkServer.connect_to_new_process`` does."""
    resource_tracker.ensure_running()
    tracker = resource_tracker.getfd()
    state, sent = caller_state()
    status_r, status_w = os.pipe()
    data_r, data_w = os.pipe()
    message = {
        "op": "fork",
        "caller": caller,
        **state,
        "tracker": tracker is not None,
        "inherited": len(fds),
    }
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
