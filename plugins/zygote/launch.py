"""The zygote's launcher (``rt.launchers`` entry point): ``rt serve`` and ``rt generate``
run in a driver process forked from the zygote, this process only standing in for it.

Without it the driver itself starts Python, imports rt's CLI, Starlette, Hypercorn and
tokenizers, and parses the tokenizer before it can use a single rank the zygote forks:
~0.5 s of a ~0.8 s start on a 2-core machine. With it, this process sends the zygote
its arguments, environment, directory, umask, limits and standard streams; the zygote
forks a nanny that takes them on and forks the driver, which runs the command as
``rt`` would (``driver.py``). This process then:

- forwards the signals a user or a supervisor sends (SIGINT, SIGTERM, SIGHUP, SIGQUIT,
  SIGUSR1, SIGUSR2) to the driver, except those it ignores, which the driver ignores
  too (``nohup``);
- holds a pipe whose other end the nanny watches: if this process dies, however it
  dies, the nanny stops the driver (SIGTERM, then SIGKILL), and the driver's ranks
  go with it;
- exits with the driver's exit code, or dies of the signal that killed it.

It declines (returns None: the command runs in this process, as without a zygote)
for other commands, ``--no-zygote``, ``RT_ZYGOTE__USE=off``, no zygote socket, a zygote
that is stale or does not answer, and when the driver, having read the config, finds
the zygote plugin not selected or ``zygote.use = "off"``. Declining costs a file
check when no zygote runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = ("serve", "generate")
# Options that come before the command and take a value as the next argument.
VALUE_OPTIONS = ("-p", "--plugins", "--profile", "--config", "--set")
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of ``rt ARGV``: its first argument that is neither an option nor
    an option's value; None after ``--`` or when there is none."""
    it = iter(argv)
    for arg in it:
        if arg == "--":
            return None
        if arg in VALUE_OPTIONS:
            next(it, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _declined_early(argv: Sequence[str]) -> bool:
    if command_of(argv) not in COMMANDS:
        return True
    options = argv[: list(argv).index("--")] if "--" in argv else argv
    if "--no-zygote" in options:
        return True
    return os.environ.get("RT_ZYGOTE__USE", "").strip().lower() == "off"


def launch(argv: list[str]) -> int | None:
    """Run ``rt ARGV`` in a driver forked from the zygote; None to run it here."""
    if _declined_early(argv):
        return None
    from rt.plugins.zygote.paths import zygote_paths

    paths = zygote_paths()
    if not os.path.lexists(paths.socket):
        return None
    from rt.plugins.zygote.call import ZygoteUnavailable, caller_state, request
    from rt.plugins.zygote.installation import installation

    state, fds = caller_state()
    status_r, status_w = os.pipe()
    life_r, life_w = os.pipe()  # life_w lives as long as this process
    message = {"op": "run", "caller": installation(), "argv": list(argv), **state}
    try:
        reply = request(paths, message, [*fds, status_w, life_r])
    except ZygoteUnavailable:
        reply = {"ok": False}
    finally:
        os.close(status_w)
        os.close(life_r)
    if not reply.get("ok"):
        os.close(status_r)
        os.close(life_w)
        return None  # the CLI asks again and notes why on its timeline
    return _stand_in(status_r, state["ignored_signals"])


class _Forwarder:
    """Forwards signals to the driver once its pid is known; keeps them until then."""

    def __init__(self, ignored: list[int]) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        # A signal the caller ignores (call.ignored_signals, sent with the request)
        # stays ignored here, as in the driver: `nohup rt serve` outlives its terminal
        # as without a zygote.
        self.previous = {sig: signal.signal(sig, self) for sig in FORWARDED if sig not in ignored}

    def __call__(self, signum: int, frame: Any) -> None:
        if self.pid is None:
            self.pending.append(signum)
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def driver(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            self(signum, None)
        self.pending.clear()

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _lines(fd: int):
    """The JSON messages the driver and its nanny write to the status pipe."""
    with os.fdopen(fd, "rb") as pipe:
        for line in pipe:  # EINTR is retried (PEP 475) after a forwarded signal
            try:
                yield json.loads(line)
            except ValueError:
                continue


def _stand_in(status_r: int, ignored: list[int]) -> int | None:
    """Wait for the driver: its pid, then its exit code (None: it declined)."""
    forward = _Forwarder(ignored)
    try:
        for message in _lines(status_r):
            if "declined" in message:
                return None
            if "driver" in message:
                forward.driver(int(message["driver"]))
            if "exit" in message:
                return _exit_code(int(message["exit"]))
    finally:
        forward.restore()
    print(
        "rt: the zygote's process that ran this command vanished without an exit status "
        "(killed?); see `rt zygote status`",
        file=sys.stderr,
    )
    return 1


def _exit_code(code: int) -> int:
    """The driver's exit code; a driver killed by signal N kills this process with N
    too (so a shell or a supervisor sees the same death), else 128 + N."""
    if code >= 0:
        return code
    signum = -code
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    return 128 + signum
