"""``rt zygote start | stop | status``.

``start`` starts the zygote as a process of its own session (``server.py``), waits until
it listens, and prints what it imported and its resident memory; a current zygote is
left running, a stale one (or one with other plugins) is replaced. ``stop`` asks it to
exit (SIGTERM, then SIGKILL, if it does not answer); rank processes it forked keep
serving their callers and end with them. ``status`` exits 0 when a zygote answers, 1
when none does.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from rt.core.cli_context import CliContext, print_json
from rt.core.errors import RtError
from rt.core.paths import rt_cache_dir
from rt.plugins.zygote.client import ZygoteUnavailable, caller_installation, request
from rt.plugins.zygote.paths import ZygotePaths, make_private_folder, zygote_paths


def register(subparsers: Any) -> None:
    from rt.core.cli import add_config_options

    p = subparsers.add_parser(
        "zygote",
        help="a resident process with torch imported that forks rank processes (start, stop, status)",
    )
    sub = p.add_subparsers(dest="zygote_command", metavar="ACTION")
    start = sub.add_parser("start", help="start this user's zygote for RT_CACHE_DIR")
    start.add_argument(
        "--timeout", type=float, default=300.0, metavar="SECONDS", help="wait this long for it"
    )
    start.set_defaults(handler=start_command)
    stop = sub.add_parser("stop", help="stop the zygote (its running ranks keep serving)")
    stop.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    stop.set_defaults(handler=stop_command)
    status = sub.add_parser("status", help="pid, age, imports, memory, and whether it is stale")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=status_command)
    for action in sub.choices.values():
        add_config_options(action)
    p.set_defaults(handler=lambda args, cli: p.print_help() or 2)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _age(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def describe(s: dict[str, Any]) -> list[str]:
    """A status reply in a few lines."""
    return [
        f"zygote pid {s['pid']}, up {_age(s['uptime_s'])}, socket {s['socket']}",
        f"imported torch {s['torch']} and {s['modules']} modules ({s['rt_files']} of rt's files)"
        f" in {s['import_s']} s; plugins: {', '.join(s['plugins']) or '-'}",
        f"resident memory {_mib(s['rss_bytes'])}; threads {s['threads']}; CUDA "
        f"{'initialised (!)' if s['cuda_initialized'] else 'not initialised'}",
        f"preloaded: {_preloaded(s.get('preloaded') or {})}",
        f"forked {s['forks']} processes ({s.get('commands', 0)} of them commands' drivers), "
        f"{s['live_ranks']} still running",
        f"stale: {s['stale']}" if s["stale"] else "current",
    ]


def _preloaded(notes: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in notes.items()) or "-"


def _status(paths: ZygotePaths) -> dict[str, Any] | None:
    try:
        return request(paths, {"op": "status", "caller": caller_installation()})
    except ZygoteUnavailable:
        return None


def status_command(args: argparse.Namespace, cli: CliContext) -> int:
    paths = zygote_paths()
    try:
        reply = request(paths, {"op": "status", "caller": caller_installation()})
    except ZygoteUnavailable as e:
        if args.json:
            print_json({"running": False, "reason": e.reason})
        else:
            print(e.reason)
        return 1
    if args.json:
        print_json({"running": True, **reply})
    else:
        print("\n".join(describe(reply)))
    return 0


def start_command(args: argparse.Namespace, cli: CliContext) -> int:
    config = cli.config(args)  # a bad --set or profile fails here, naming the value
    paths = zygote_paths()
    make_private_folder(paths.folder)
    plugins = [p.name for p in cli.selection.plugins]
    # Two starts at once take turns: the second finds the first's zygote running.
    with _start_lock(paths):
        running = _status(paths)
        if running is not None:
            why = running["stale"]
            if why is None and running["plugins"] != plugins:
                why = _plugins_differ(running["plugins"], plugins)
            if why is None:
                print(f"already running: {describe(running)[0]}")
                return 0
            print(f"replacing zygote pid {running['pid']}: {why}")
            _stop(paths, args.timeout)
        status = _spawn(paths, cli, config, args.timeout)
    print("\n".join(describe(status)))
    return 0


@contextlib.contextmanager
def _start_lock(paths: ZygotePaths) -> Iterator[None]:
    """Held by one `rt zygote start` from its status check until its zygote is up."""
    fd = os.open(paths.folder / "start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the holder's own start ends within its timeout
        yield
    finally:
        os.close(fd)


def _plugins_differ(imported: list[str], selected: list[str]) -> str:
    """Why a running zygote's plugins do not serve this start, naming only the change."""
    added = [p for p in selected if p not in imported]
    dropped = [p for p in imported if p not in selected]
    parts = []
    if added:
        parts.append(f"this start also selects {', '.join(added)}")
    if dropped:
        parts.append(f"it imported {', '.join(dropped)}, which this start does not select")
    return "; ".join(parts) or f"it registered the same plugins in another order: {imported}"


def _spawn(paths: ZygotePaths, cli: CliContext, config: Any, timeout: float) -> dict[str, Any]:
    ready_r, ready_w = os.pipe()
    spec = {
        "cache_dir": str(rt_cache_dir()),
        # The config and plugins it preloads for (rt_resident_preload), as this command
        # resolved them: from the caller's directory, environment and options.
        "state": base64.b64encode(pickle.dumps((config, cli.selection))).decode(),
        "ready_fd": ready_w,
    }
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "rt.plugins.zygote.server", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            pass_fds=[ready_w],
            start_new_session=True,  # no terminal: ^C and hang-ups of this shell pass it by
            cwd="/",  # it holds no folder busy (-P: nor puts it on sys.path); ranks take the caller's
        )
    finally:
        os.close(fd)
        os.close(ready_w)
    try:
        line = _read_line(ready_r, timeout)
    finally:
        os.close(ready_r)
    if line is None:
        proc.kill()
        raise RtError(f"the zygote did not start within {timeout} s; its log: {paths.log}")
    reply = json.loads(line) if line else {"ok": False, "error": "it exited"}
    if not reply.get("ok"):
        proc.wait(timeout=10)
        raise RtError(f"the zygote did not start: {reply.get('error')}; its log: {paths.log}")
    return reply


def _read_line(fd: int, timeout: float) -> str | None:
    """What the starting zygote reports ("" if it exited first); None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_zygote(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"rt.plugins.zygote.server" in f.read()
    except OSError:
        return False


def _stop(paths: ZygotePaths, timeout: float) -> str:
    """Stop the zygote; returns what happened, in words."""
    try:
        reply = request(paths, {"op": "stop"})
        pid, running = int(reply["pid"]), reply.get("live_ranks", [])
    except ZygoteUnavailable as e:
        try:  # it may be alive but not answering (still importing, or its socket lost)
            pid, running = int(json.loads(paths.record.read_text())["pid"]), []
        except (OSError, ValueError, KeyError):
            return f"no zygote to stop ({e.reason})"
        if not (_alive(pid) and _is_zygote(pid)):
            return f"no zygote to stop ({e.reason})"
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    how = "stopped"
    if _alive(pid) and _is_zygote(pid):
        os.kill(pid, signal.SIGKILL)
        how = "killed (it did not exit within the timeout)"
        while _alive(pid):
            time.sleep(0.02)
        for path in (paths.socket, paths.record):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    left = (
        f"; {len(running)} rank process(es) it forked keep serving their callers" if running else ""
    )
    return f"{how} zygote pid {pid}{left}"


def stop_command(args: argparse.Namespace, cli: CliContext) -> int:
    print(_stop(zygote_paths(), args.timeout))
    return 0
