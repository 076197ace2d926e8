"""The driver's view of the worker ranks: spawn, watch, collect their startup, stop.

The worker ranks are 1..N-1, or 0..N-1 when rank 0 runs in a process of its own
(``parallel.rank0 = "process"``); rank 0 then also gets a duplex pipe the driver's
engine sends steps on (``executor.RemoteExecutor``). Ranks are forked from a
forkserver that has torch and rt's rank module imported, so N ranks do not each pay
the import. One monitor thread is the only reader of the ranks' report pipes and
process sentinels: it records each rank's startup report and notices a rank that
dies, naming the rank and how it ended (exit code or signal) to every listener (the
startup, the engine) within a second.
"""

from __future__ import annotations

import contextvars
import logging
import multiprocessing as mp
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from rt.core import errors
from rt.core.errors import EngineDead, RtError
from rt.core.timeline import Span
from rt.plugins.tp.executor import EngineInfo
from rt.plugins.tp.held_ranks import held_ranks
from rt.plugins.tp.preload import FORKSERVER_PRELOAD
from rt.plugins.tp.rank_main import RankSpec, rank_main

log = logging.getLogger("rt.workers")


def exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def _rank_user_error(rank: int, name: str, message: str, stage: str | None) -> RtError:
    """A rank's user-fixable error, raised again in the driver as the same class."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, RtError)):
        cls = RtError
    where = f"rank {rank}, stage {stage!r}" if stage else f"rank {rank}"
    return cls(f"{where}: {message}")


def start_all(processes: list[mp.process.BaseProcess]) -> None:
    """Start every process, each from its own thread when there are several.

    A start waits for its fork: the server (a zygote or multiprocessing's forkserver)
    forks the rank, which then reads its pickled spec. One after the other, three ranks
    took ~30-45 ms each from a zygote on 2 cores, and the group's rendezvous waits for
    the last; started together, the server forks one while another reads its spec.
    Each thread runs in a copy of this context, so what it notes lands on the span that
    started the ranks. The first failure is raised once every start has returned.
    """
    if len(processes) == 1:
        processes[0].start()
        return
    failures: list[BaseException] = []

    def start(proc: mp.process.BaseProcess) -> None:
        try:
            proc.start()
        except BaseException as e:
            failures.append(e)

    threads = [
        threading.Thread(
            target=contextvars.copy_context().run, args=(start, proc), name=f"start-{proc.name}"
        )
        for proc in processes
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def _readable(conn: Connection) -> bool:
    """Something (a message, or the end of the pipe) is waiting on ``conn``."""
    try:
        return conn.poll(0)
    except (EOFError, OSError):
        return True  # recv will say which, and drop the pipe


class WorkerGroup:
    """The worker ranks of a TP group started on this node."""

    def __init__(self) -> None:
        self.processes: dict[int, mp.process.BaseProcess] = {}
        self.rank0_conn: Connection | None = None  # steps to rank 0's own process
        self.engine_info: EngineInfo | None = None  # rank 0's startup report
        self._conns: dict[int, object] = {}
        self._ready: dict[int, list[Span]] = {}
        self._errors: dict[int, str] = {}
        self._user_errors: dict[int, RtError] = {}  # errors the user can fix, by rank
        self._serving = False  # every rank reported ready
        self._cond = threading.Condition()
        self._listeners: list[Callable[[str], None]] = []
        self._stopping = False
        self.dead: str | None = None  # the first death, with the rank's report
        self.dead_summary: str | None = None  # the same in one line: rank, pid, how

    @classmethod
    def start(
        cls,
        specs: list[RankSpec],
        method: str = "forkserver",
        store_listener: socket.socket | None = None,
    ) -> WorkerGroup:
        """Start a process per spec. ``store_listener`` goes to rank 0's process, which
        serves the rendezvous store on it; the caller closes its own copy after."""
        group = cls()
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        ends = []  # the ranks' ends of their pipes, closed here once they are started
        for spec in specs:
            parent, child = ctx.Pipe(duplex=False)
            steps = None
            if spec.rank == 0:
                group.rank0_conn, steps = ctx.Pipe(duplex=True)
            listener = store_listener if spec.rank == 0 else None
            group.processes[spec.rank] = ctx.Process(
                target=rank_main,
                args=(spec, child, steps, listener),
                name=f"rt-rank-{spec.rank}",
                daemon=True,
            )
            group._conns[spec.rank] = parent
            ends += [child] if steps is None else [child, steps]
        try:
            start_all(list(group.processes.values()))
        finally:
            for end in ends:
                end.close()
        threading.Thread(target=group._monitor, name="rt-rank-monitor", daemon=True).start()
        return group

    def on_death(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` when a rank dies (at once if one already has).
        ``reason`` holds the rank's own report (a traceback, perhaps); ``dead_summary``
        is set by then, the one line to show a client."""
        with self._cond:
            self._listeners.append(listener)
            dead = self.dead
        if dead is not None:
            listener(dead)

    def _monitor(self) -> None:
        sentinels = {p.sentinel: rank for rank, p in self.processes.items()}
        conns = {c: rank for rank, c in self._conns.items()}
        while True:
            waitables = list(sentinels) + list(conns)
            if not waitables:
                return
            ready = wait(waitables)
            for conn in [r for r in ready if r in conns]:
                self._receive(conn, conns)
            exited = [sentinels.pop(r) for r in ready if r in sentinels]
            for rank in exited:
                self.processes[rank].join(timeout=1)
            # A rank killed by a signal first: the others in the same wait exited because
            # it died, and the first death recorded is the one every client is told.
            for rank in sorted(exited, key=lambda r: (self.processes[r].exitcode or 0) >= 0):
                self._drain(rank, conns)
                self._on_exit(rank)

    def _drain(self, rank: int, conns: dict[Connection, int]) -> None:
        """Read what ``rank`` sent before it exited (its error report): it may be ready
        in the same wait as its exit, and read after it the death reads as a bare
        "exited with code 1"."""
        for conn in [c for c, r in conns.items() if r == rank]:
            while conn in conns and _readable(conn):
                self._receive(conn, conns)

    def _receive(self, conn: Connection, conns: dict[Connection, int]) -> None:
        """One message from a rank's pipe; a closed pipe leaves ``conns``."""
        try:
            self._on_message(conns[conn], conn.recv())
        except (EOFError, OSError):
            del conns[conn]

    def _on_message(self, rank: int, message: tuple) -> None:
        with self._cond:
            if message[0] == "ready":
                self._ready[rank] = [Span.from_dict(d) for d in message[1]]
                if message[2] is not None:
                    self.engine_info = message[2]
            elif message[0] == "error":
                tb = message[2].rstrip()
                self._errors[rank] = message[1] + (
                    f"\n--- rank {rank} traceback ---\n{tb}" if tb else ""
                )
                if len(message) > 3 and message[3] is not None:
                    user = _rank_user_error(rank, *message[3])
                    user.add_note(self._errors[rank])  # shown with --debug
                    self._user_errors[rank] = user
            self._cond.notify_all()

    def _on_exit(self, rank: int) -> None:
        proc = self.processes[rank]
        with self._cond:
            if self._stopping:
                return
            report = self._errors.get(rank)
            user = self._user_errors.get(rank)
            detail = str(user) if user is not None else report  # a user error: one line
            summary = f"rank {rank} (pid {proc.pid}) {exit_reason(proc.exitcode)}"
            if self.dead is None:  # the others' timeouts are often why this one failed
                others = {r: p.pid for r, p in self.processes.items() if r != rank and p.pid}
                held = held_ranks(others)
                summary = f"{summary} {held}" if held else summary
            reason = f"{summary}: {detail}" if detail else summary
            if self.dead is None:
                self.dead = reason
                self.dead_summary = summary
            listeners = list(self._listeners)
            self._cond.notify_all()
        # Before every rank is up the failed startup reports the death itself.
        log.log(logging.ERROR if self._serving else logging.DEBUG, "%s", reason)
        if user is not None:
            log.debug("rank %d's report: %s", rank, report)
        for listener in listeners:
            try:
                listener(reason)
            except Exception:
                log.exception("rank-death listener failed")

    def wait_ready(self, timeout: float | None = None) -> list[Span]:
        """Wait for every rank's startup; return their spans. A failed or dead rank raises."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    self.dead is not None or self._errors or len(self._ready) == len(self.processes)
                ),
                timeout,
            )
            if self._errors:
                rank, detail = next(iter(sorted(self._errors.items())))
                if rank in self._user_errors:
                    raise self._user_errors[rank]
                raise RtError(f"rank {rank} failed during startup: {detail}")
            if self.dead is not None:
                raise EngineDead(self.dead)
            if not ok:
                missing = sorted(set(self.processes) - set(self._ready))
                raise RtError(f"ranks {missing} did not finish startup within {timeout}s")
            self._serving = True
            return [s for spans in self._ready.values() for s in spans]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every rank: wait a little for a clean exit, then terminate, then kill.

        After a death nobody waits: the other ranks are stuck in a collective with
        the dead one (or fail out of it), and the server must exit within seconds."""
        with self._cond:
            self._stopping = True
            if self.dead is not None:
                timeout = 0.0
        for proc in self.processes.values():
            proc.join(timeout)
        for proc in self.processes.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
