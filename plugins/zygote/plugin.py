"""Built-in plugin ``zygote``: a resident process that has imported torch, and ranks forked from it.

``rt zygote start`` starts one per user and ``RT_CACHE_DIR`` (``server.py``); ``rt zygote
status`` and ``stop`` ask it (``commands.py``). ``rt serve`` and ``rt generate`` ask it
at CLI entry, before any other plugin's ``rt_cli_start`` (this one is a wrapper): when
it answers and is current, it stands in for multiprocessing's forkserver in this
process (``client.py``), so ``preload-forkserver`` starts no server of its own and every
rank process is forked from the zygote, import-free. The preload stage records the
outcome as this plugin's span: ``ranks=forked from zygote pid N``, or a skip that says
why not (no zygote, a stale one, ``--no-zygote``). See docs/startup.md.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from typing import Any

import attrs
from rt.core import SkipStage, hookimpl

# Commands whose driver starts rank processes.
DRIVER_COMMANDS = ("serve", "generate")


@attrs.frozen
class Asked:
    """What asking the zygote gave: its pid, or why none is used."""

    when: str
    start: float
    end: float
    pid: int | None = None
    reason: str | None = None


def ask(config: Any, when: str) -> Asked:
    """Ask this user's zygote for ``RT_CACHE_DIR``; install it as the forkserver if it
    answers and is current."""
    start = time.time()
    if config.zygote.use == "off":
        return Asked(when, start, time.time(), reason="zygote.use = off (--no-zygote)")
    from rt.plugins.zygote.paths import zygote_paths

    paths = zygote_paths()
    if not os.path.lexists(paths.socket):  # the common case, without importing the client
        reason = f"no zygote runs for {paths.folder.parent} (`rt zygote start` starts one)"
        return Asked(when, start, time.time(), reason=reason)
    from rt.plugins.zygote.client import ZygoteUnavailable, caller_installation, hello, install

    try:
        caller = caller_installation()
        pid = hello(paths, caller)
    except ZygoteUnavailable as e:
        return Asked(when, start, time.time(), reason=e.reason)
    install(paths, pid, caller)
    # Each rank reports its shared memory to this process's resource tracker, as a
    # forkserver child does: start it now, off the workers stage's path.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return Asked(when, start, time.time(), pid=pid)


def _forks_ranks(config: Any) -> bool:
    local = config.parallel.ranks_on_this_node
    return config.parallel.rank0 == "process" or local > 1


class Zygote:
    def __init__(self) -> None:
        self._asked: Asked | None = None

    @hookimpl
    def rt_register_commands(self, subparsers: Any) -> None:
        from rt.plugins.zygote.commands import register

        register(subparsers)

    @hookimpl(wrapper=True)
    def rt_cli_start(self, command: str, config: Any) -> Generator[None, Any, Any]:
        # A wrapper runs before every plain rt_cli_start hookimpl: preload-forkserver,
        # which forks multiprocessing's forkserver here, then finds the zygote installed
        # in its place and starts nothing (the server's `import torch` would take a core
        # from the startup for nothing).
        if command in DRIVER_COMMANDS:
            self._asked = ask(config, "at CLI entry")
        return (yield)

    @hookimpl
    def rt_preload(self, config: Any, runtime: Any) -> None:
        from rt.core.timeline import current_span, note

        asked, self._asked = self._asked, None
        if asked is None:  # a runtime the CLI did not start
            asked = ask(config, "in the preload stage")
        span = current_span()
        if span is not None:  # the span is the asking, whenever it happened
            span.start, span.end = asked.start, asked.end
        note("asked", asked.when)
        driver = sys.modules.get("rt.plugins.zygote.driver")  # imported in a zygote only
        handed = driver.HANDED_OFF if driver is not None else {}
        if handed:
            note(
                "driver",
                f"forked from zygote pid {handed['zygote']} (rt launched as pid {handed['caller']})",
            )
        if asked.pid is None:
            raise SkipStage(f"{asked.reason}: rank processes start without a zygote")
        if not _forks_ranks(config):
            from rt.plugins.zygote.client import uninstall

            uninstall()
            raise SkipStage(
                f"zygote pid {asked.pid} is current, but TP=1 with rank 0 in the driver "
                "starts no rank process"
            )
        note("zygote", asked.pid)
        note("ranks", f"forked from zygote pid {asked.pid}")

    @hookimpl
    def rt_shutdown(self, runtime: Any) -> None:
        client = sys.modules.get("rt.plugins.zygote.client")  # not imported: nothing to undo
        if client is not None and runtime.is_driver:
            client.uninstall()


PLUGIN = Zygote()
