"""What runs in the processes a zygote forks for one request: a nanny, and the rank.

The zygote forks a **nanny**, which takes on the caller's working directory,
environment, umask, resource limits and standard streams, then forks the **rank** (so
the rank inherits all of it) and stays its parent:

- it writes the rank's pid, and later its exit status, to the caller's status pipe
  (what multiprocessing's forkserver writes: the caller's ``Process`` reads them, so
  ``exitcode``, ``join`` and the sentinel work as for any forkserver child, and the
  zygote's own death changes nothing for a running rank);
- it watches the caller: the caller holds the data pipe's write end as long as it
  holds the ``Process`` (multiprocessing keeps a copy for the child's
  ``parent_process()``), so the pipe hangs up when the caller dies, however it dies;
  the nanny then kills the rank. ``PR_SET_PDEATHSIG`` could not do this: the rank's
  parent is not the caller.
- the rank's own ``PR_SET_PDEATHSIG`` (``rank_main`` sets one) names the nanny, not
  the zygote, so stopping or losing the zygote never kills a serving rank.

The rank then runs what multiprocessing's forkserver child runs: it reads the
preparation data and the pickled ``Process`` from the data pipe and bootstraps it.
"""

from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from rt.core.output import finish_output

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def prctl(option: int, value: Any) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the nanny's watch still ends the rank with its caller


def split_fds(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """Name the descriptors of a fork request, in the order the caller sent them:
    its standard streams (those it has), the data pipe's read end, the status pipe's
    write end, its resource tracker's pipe (if any), then the fds the pickled process
    refers to (multiprocessing's ``DupFd``)."""
    stdio = [i for i, present in enumerate(request["stdio"]) if present]
    want = len(stdio) + 2 + int(bool(request["tracker"])) + int(request["inherited"])
    if len(fds) != want:
        raise ValueError(f"a fork request names {want} file descriptors; {len(fds)} came")
    it = iter(fds)
    named: dict[str, Any] = {"stdio": {i: next(it) for i in stdio}}
    named["data"], named["status"] = next(it), next(it)
    named["tracker"] = next(it) if request["tracker"] else None
    named["inherited"] = list(it)
    return named


def become_caller(request: dict[str, Any], stdio: dict[int, int]) -> None:
    """Take on the caller's standard streams, directory, umask, environment, limits,
    CPU affinity, nice value and ignored signals."""
    _flush_std_streams()  # what is buffered is the zygote's, not the caller's
    for target in (0, 1, 2):
        fd = stdio.get(target)
        if fd is None:
            fd = os.open(os.devnull, os.O_RDWR)
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    _rebuild_std_streams()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in request.get("ignored_signals", ()):  # as exec keeps SIG_IGN
        signal.signal(sig, signal.SIG_IGN)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, (soft, hard) in request["rlimits"].items():
        _set_limit(name, soft, hard)
    _set_affinity(request.get("affinity"))
    _set_nice(request.get("nice"))


def _rebuild_std_streams() -> None:
    """Python's streams over fds 0-2 as a fresh interpreter makes them: stdout line
    buffered on a terminal only, stderr always line buffered."""
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"
    sys.stdin = sys.__stdin__ = open(0, closefd=False, encoding=encoding)
    out = open(1, "w", encoding=encoding, closefd=False, buffering=1 if os.isatty(1) else -1)
    sys.stdout = sys.__stdout__ = out
    err = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)
    sys.stderr = sys.__stderr__ = err


def fork_child(close_fd: int, body: Callable[[], int]) -> int:
    """Fork this nanny's one child and return its pid. The child closes ``close_fd`` (the
    nanny's end of something it must not hold), dies with the nanny, runs ``body`` and
    exits with its code (a ``SystemExit``'s too; 1 and a traceback on anything else)."""
    nanny = os.getpid()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        os.close(close_fd)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != nanny:  # the nanny died before the line above
            os._exit(1)
        code = body()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        # the caller's output, which it may have asked for in a file: a failed write
        # (a full disk) is an error and exit 1, as in the caller's own process
        os._exit(finish_output(code))


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _lower(a: int, b: int) -> int:
    """The lower of two resource limits, RLIM_INFINITY being the highest."""
    if a == resource.RLIM_INFINITY:
        return b
    if b == resource.RLIM_INFINITY:
        return a
    return min(a, b)


def _set_limit(name: str, soft: int, hard: int) -> None:
    which = getattr(resource, name, None)
    if which is None:
        return
    try:
        resource.setrlimit(which, (soft, hard))
        return
    except (ValueError, OSError):
        pass
    # An unprivileged process cannot raise a hard limit above the zygote's: keep the
    # caller's soft limit as far as the zygote's hard one allows.
    own_soft, own_hard = resource.getrlimit(which)
    kept = _lower(soft, own_hard)
    try:
        resource.setrlimit(which, (kept, own_hard))
    except (ValueError, OSError):
        kept = own_soft
    print(
        f"rt zygote: the caller's {name} ({soft}, {hard}) is above the zygote's hard limit "
        f"{own_hard}; the rank runs with ({kept}, {own_hard}). Start the zygote from a "
        "shell with the caller's limits to keep them.",
        file=sys.stderr,
    )


def _set_affinity(cpus: list[int] | None) -> None:
    # The rank's thread count follows its affinity (cores.py): a caller started under
    # `taskset -c 0-3` must get 4 threads' worth, not the zygote's whole machine.
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        print(
            f"rt zygote: cannot run on the caller's CPUs {_cpu_list(cpus)} ({e.strerror}): "
            f"the zygote's cpuset allows {_cpu_list(sorted(os.sched_getaffinity(0)))}. Start "
            "the zygote where the caller runs (the same container or systemd unit).",
            file=sys.stderr,
        )


def _cpu_list(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def _set_nice(nice: int | None) -> None:
    if nice is None:
        return
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if nice == own:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        # Lowering the nice value (a higher priority) needs CAP_SYS_NICE.
        print(
            f"rt zygote: cannot take the caller's nice value {nice} (the zygote's is {own}, "
            f"and lowering it needs CAP_SYS_NICE); it stays {own}. Start the zygote with "
            "the caller's nice value to keep it.",
            file=sys.stderr,
        )


def run_nanny(request: dict[str, Any], fds: list[int]) -> int:
    """The nanny's life: fork the rank, report it, watch it and the caller."""
    named = split_fds(request, fds)
    become_caller(request, named["stdio"])
    prctl(PR_SET_NAME, b"rt-zygote-nanny")
    pid = fork_child(
        named["status"], lambda: run_rank(named["data"], named["tracker"], named["inherited"])
    )
    from multiprocessing.forkserver import write_signed

    for fd in [*named["inherited"], *filter(None, [named["tracker"]])]:
        os.close(fd)
    try:
        write_signed(named["status"], pid)
    except OSError:
        pass  # the caller is gone: the watch below sees its pipe hang up
    code = watch(pid, named["data"])
    try:
        write_signed(named["status"], code)
    except OSError:
        pass
    return 0


def watch(pid: int, caller_pipe: int, grace_s: float = 0.0) -> int:
    """Wait for the child ``pid`` to end; stop it if the caller's pipe hangs up first:
    SIGKILL at once (``grace_s`` 0: a rank), or SIGTERM and SIGKILL ``grace_s`` later
    (a driver, which then stops its ranks and writes what it must).
    Returns the child's exit code as ``Process.exitcode`` gives it (-N: signal N)."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None  # Linux < 5.3: poll every 0.1 s instead
    poller = select.poll()
    # No events asked: poll reports POLLHUP (every writer closed) and POLLERR anyway, and
    # does not wake for the data the child has yet to read.
    poller.register(caller_pipe, 0)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    kill_at: float | None = None
    while True:
        wait_ms = None if pidfd is not None else 100
        if kill_at is not None:
            left_ms = max(0, int((kill_at - time.monotonic()) * 1000))
            wait_ms = left_ms if wait_ms is None else min(wait_ms, left_ms)
        for fd, events in poller.poll(wait_ms):
            if fd == caller_pipe and events & (select.POLLHUP | select.POLLERR):
                poller.unregister(caller_pipe)
                if grace_s > 0:
                    _signal(pid, signal.SIGTERM)
                    kill_at = time.monotonic() + grace_s
                else:
                    _signal(pid, signal.SIGKILL)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if kill_at is not None and time.monotonic() >= kill_at:
            _signal(pid, signal.SIGKILL)
            kill_at = None


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def run_rank(data: int, tracker: int | None, inherited: list[int]) -> int:
    """What multiprocessing's forkserver child does (``forkserver._serve_one`` and
    ``spawn._main``), with the caller's resource tracker and the fds it passed."""
    from multiprocessing import forkserver, process, reduction, resource_tracker, spawn

    resource_tracker._resource_tracker._fd = tracker
    forkserver._forkserver._inherited_fds = inherited
    parent_sentinel = os.dup(data)
    with os.fdopen(data, "rb", closefd=True) as from_parent:
        process.current_process()._inheriting = True
        try:
            preparation = reduction.pickle.load(from_parent)
            spawn.prepare(preparation)
            prctl(PR_SET_NAME, str(preparation.get("name", "rt-rank"))[:15].encode())
            obj = reduction.pickle.load(from_parent)
        finally:
            del process.current_process()._inheriting
    return obj._bootstrap(parent_sentinel)
