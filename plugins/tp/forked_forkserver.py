"""Start multiprocessing's forkserver by forking the CLI instead of spawning an interpreter.

multiprocessing starts its forkserver as a fresh ``python -c`` that then imports its
preload modules. For rt that fresh interpreter pays, before torch's import can begin,
for what the CLI process already holds: Python's start and ``site`` (~30 ms with
editable installs) and ``rt.core`` with pluggy and attrs, which the preload module's
own imports pull in (~0.15 s on the 2-core VM). All of it sits on the critical path
of a fast start: rank 0 waits on the server's torch import. A server forked from the
CLI at CLI entry inherits those modules and starts on torch at once.

Forking is safe only while the process runs one thread and has no torch (OpenMP and
torch's own threads do not survive a fork), so :func:`start` falls back to the spawned
server otherwise, or where this Python's forkserver differs from the one this code
drives (3.11's: no authentication key). The server then behaves exactly like the
spawned one: same socket protocol, same ``alive`` pipe, same preload.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any


def can_fork() -> str | None:
    """Why the server cannot be forked from this process now, or None when it can."""
    from multiprocessing import forkserver

    if threading.active_count() > 1:
        return "other threads run"
    if "torch" in sys.modules:
        return "torch is imported"
    if "authkey_r" in inspect.signature(forkserver.main).parameters:
        return "this Python's forkserver authenticates its clients"
    server = forkserver._forkserver
    if not all(
        hasattr(server, a)
        for a in ("_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd")
    ):
        return "this Python's forkserver keeps other state"
    return None


def start(preload: list[str]) -> str:
    """Make sure the forkserver runs, preloading ``preload``; returns how it started:
    "forked", "spawned: <why not forked>" or "already running"."""
    from multiprocessing import forkserver, get_context

    get_context("forkserver").set_forkserver_preload(preload)
    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        forkserver.ensure_running()  # restarts it if it died
        return "already running"
    why_not = can_fork()
    if why_not is not None:
        forkserver.ensure_running()
        return f"spawned: {why_not}"
    _fork_server(server, preload)
    return "forked"


def _fork_server(server: Any, preload: list[str]) -> None:
    # What ForkServer.ensure_running does, with os.fork() in place of spawning
    # `python -c "from multiprocessing.forkserver import main; main(...)"`.
    from multiprocessing import connection, forkserver, resource_tracker, util

    resource_tracker.ensure_running()  # every rank gets its fd, as with a spawned server
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        sys.stdout.flush()  # else the server's children could write the CLI's buffer again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the server: never returns into the CLI's code
            code = 1
            try:
                # ^C in the terminal reaches the whole process group; the server leaves
                # when the CLI does (its alive pipe closes), never mid-import on its own
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(alive_w)  # the server exits when every client closed its end
                forkserver.main(listener.fileno(), alive_r, preload)
                code = 0
            except SystemExit as e:  # how main() ends once every client is gone
                code = e.code if isinstance(e.code, int) else 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
