"""The zygote process: ``python -m rt.plugins.zygote.server SPEC`` (``rt zygote start``).

It holds a lock in its folder for its whole life (a second zygote for the same
``RT_CACHE_DIR`` cannot start; a crashed one leaves no lock), imports torch and the
engine (``imported.py``), binds its socket (0600, in a 0700 folder), tells the starting
command it is ready, then answers one request at a time on one thread:

- ``hello``: is this zygote current for the caller (``fingerprint.py``)?
- ``status``: pid, age, what it imported, resident memory, forks, staleness.
- ``fork``: check the peer's user and staleness, then fork a nanny (``child.py``) that
  becomes the caller and forks the rank.
- ``run``: the same checks, then fork a nanny (``driver.py``) that becomes the caller
  and forks a driver running the caller's ``rt serve`` or ``rt generate``.
- ``stop``: answer, then exit (the ranks it forked keep serving their callers).

Between requests it wakes every second (a ``select`` timeout, no thread) to reap its
nannies and to exit once its socket file is gone or replaced, or its folder removed.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rt.core.errors import RtError
from rt.plugins.zygote.child import run_nanny
from rt.plugins.zygote.driver import run_command_nanny
from rt.plugins.zygote.fingerprint import drift
from rt.plugins.zygote.home import bind, take_lock
from rt.plugins.zygote.imported import (
    Imported,
    fork_safety,
    import_everything,
    resident_bytes,
    thread_names,
)
from rt.plugins.zygote.installation import installation_difference
from rt.plugins.zygote.paths import ZygotePaths, zygote_paths
from rt.plugins.zygote.wire import (
    MAX_FDS,
    foreign_peer,
    peer_credentials,
    recv_message,
    send_message,
)

CHECK_S = 1.0
REQUEST_TIMEOUT_S = 10.0


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} zygote pid {os.getpid()}: {message}", flush=True)


class ZygoteServer:
    def __init__(
        self, paths: ZygotePaths, imported: Imported, listener: socket.socket, lock: int
    ) -> None:
        self.paths = paths
        self.imported = imported
        self.listener = listener
        self.lock = lock
        self.inode = os.lstat(paths.socket).st_ino
        self.started = time.time()
        self.forks = 0
        self.commands = 0  # drivers forked (`rt serve`/`rt generate` handed over)
        self.nannies: set[int] = set()
        self.stopping = False

    def serve(self) -> str:
        """Answer requests until stopped or homeless; returns why it stopped."""
        while not self.stopping:
            readable, _, _ = select.select([self.listener], [], [], CHECK_S)
            self.reap()
            lost = self.lost_home()
            if lost is not None:
                return lost
            if readable:
                self.handle()
        return "stopped by `rt zygote stop`"

    def reap(self) -> None:
        for pid in list(self.nannies):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.nannies.discard(pid)

    def lost_home(self) -> str | None:
        try:
            st = os.lstat(self.paths.socket)
        except FileNotFoundError:
            return f"its socket {self.paths.socket} is gone"
        except OSError as e:
            return f"its socket {self.paths.socket} cannot be checked: {e}"
        if st.st_ino != self.inode:
            return f"its socket {self.paths.socket} was replaced"
        return None

    def handle(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # the caller gave up before we got to it
        fds: list[int] = []
        with conn:
            try:
                conn.settimeout(REQUEST_TIMEOUT_S)
                peer = peer_credentials(conn)
                request, fds = recv_message(conn, MAX_FDS)
                refusal = foreign_peer(peer)
                if refusal is not None:
                    log(f"refused: {refusal}")
                    reply: dict[str, Any] = {"ok": False, "reason": refusal}
                else:
                    reply = self.answer(request, fds, conn, peer.pid)
                send_message(conn, reply)
            except Exception as e:  # one bad request never ends the zygote
                log(f"a request failed: {type(e).__name__}: {e}")
            finally:
                for fd in fds:  # the nanny has its own copies
                    _close(fd)

    def answer(
        self, request: dict[str, Any], fds: list[int], conn: socket.socket, caller: int
    ) -> dict:
        op = request.get("op")
        if op == "hello":
            reason = self.stale(request.get("caller"))
            return {"ok": reason is None, "reason": reason, "pid": os.getpid()}
        if op == "status":
            return {"ok": True, **self.status(request.get("caller"))}
        if op == "fork":
            reason = self.stale(request.get("caller"))
            if reason is not None:
                return {"ok": False, "reason": f"stale: {reason}"}
            nanny = self.fork(conn, lambda: run_nanny(request, fds))
            return {"ok": True, "pid": os.getpid(), "nanny": nanny}
        if op == "run":
            reason = self.stale(request.get("caller"))
            if reason is not None:
                return {"ok": False, "reason": f"stale: {reason}"}
            self.commands += 1
            nanny = self.fork(conn, lambda: run_command_nanny(request, fds, caller))
            return {"ok": True, "pid": os.getpid(), "nanny": nanny}
        if op == "stop":
            self.stopping = True
            self.reap()
            return {"ok": True, "pid": os.getpid(), "live_ranks": sorted(self.nannies)}
        return {"ok": False, "reason": f"unknown request {op!r}"}

    def stale(self, caller: dict[str, Any] | None) -> str | None:
        """Why this zygote may not fork for ``caller`` (or at all), or None."""
        if caller is not None:
            reason = installation_difference(caller, self.imported.installation)
            if reason is not None:
                return reason
        i = self.imported
        return drift(i.sources, i.versions, i.installation["rt_path"], i.mtimes)

    def fork(self, conn: socket.socket, nanny: Callable[[], int]) -> int:
        """Fork a nanny that runs ``nanny()`` and exits with its code."""
        problem = fork_safety()  # nothing should have started a thread since the imports
        if problem is not None:
            raise RtError(f"not forking: {problem}")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self.listener.close()
                conn.close()
                os.close(self.lock)  # the lock is the zygote's alone: no child may keep it
                code = nanny()
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self.nannies.add(pid)
        self.forks += 1
        return pid

    def status(self, caller: dict[str, Any] | None) -> dict[str, Any]:
        torch = sys.modules.get("torch")
        return {
            "pid": os.getpid(),
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 1),
            "socket": str(self.paths.socket),
            "import_s": self.imported.seconds,
            "torch": self.imported.torch_version,
            "modules": len(sys.modules),
            "rt_files": len(self.imported.sources),
            "plugins": list(self.imported.plugins),
            "preload": list(self.imported.preload),
            "versions": self.imported.versions,
            "installation": self.imported.installation,
            "rss_bytes": resident_bytes(),
            "threads": len(thread_names()),
            "cuda_initialized": bool(torch is not None and torch.cuda.is_initialized()),
            "forks": self.forks,
            "commands": self.commands,
            "preloaded": self.imported.preloaded,
            "live_ranks": len(self.nannies),
            "stale": self.stale(caller),
        }

    def close(self) -> None:
        """Remove the socket and the record if they are still this zygote's."""
        try:
            if os.lstat(self.paths.socket).st_ino == self.inode:
                os.unlink(self.paths.socket)
        except OSError:
            pass
        try:
            if json.loads(self.paths.record.read_text()).get("pid") == os.getpid():
                os.unlink(self.paths.record)
        except (OSError, ValueError):
            pass
        self.listener.close()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _report(fd: int, message: dict[str, Any]) -> None:
    """Tell `rt zygote start` how the start went (one JSON line), and let it go."""
    try:
        os.write(fd, (json.dumps(message) + "\n").encode())
    except OSError:
        pass
    _close(fd)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    ready = int(spec["ready_fd"])
    signal.signal(signal.SIGTERM, _terminate)
    # numpy (under torch's import) loads OpenBLAS, which starts its thread pool at load
    # time unless told to use one thread: that pool would be a second thread to fork.
    # The ranks do their matrix work in torch; numpy's BLAS stays single-threaded in them.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        paths = zygote_paths(Path(spec["cache_dir"]))
        lock = take_lock(paths)
        config, selection = pickle.loads(base64.b64decode(spec["state"]))
        imported = import_everything(selection, config)
        listener = bind(paths)
        server = ZygoteServer(paths, imported, listener, lock)
        record = {"pid": os.getpid(), "started": server.started, "socket": str(paths.socket)}
        fd = os.open(paths.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as f:
            json.dump(record, f)
    except BaseException as e:
        traceback.print_exc()
        _report(ready, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    status = server.status(None)
    log(
        f"ready in {imported.seconds} s: torch {imported.torch_version}, {status['modules']} modules"
    )
    _report(ready, {"ok": True, **status})
    why = "SIGTERM"
    try:
        why = server.serve()
    except SystemExit:
        pass
    finally:
        server.close()
        log(f"exits: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
