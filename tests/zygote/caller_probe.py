"""A zygote's caller for the tests: ``python -m tests.zygote.caller_probe ACTION [ARG]``.

It asks the zygote of ``RT_CACHE_DIR`` (as ``rt serve`` does at CLI entry), then starts
processes through multiprocessing's forkserver context, which the zygote now serves,
and prints one JSON line per fact the test checks.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import signal
import sys
import time

from tests.zygote import child_targets


def _say(**facts: object) -> None:
    print(json.dumps(facts), flush=True)


def main() -> None:
    from rt.plugins.zygote.client import caller_installation, hello, install, installed
    from rt.plugins.zygote.paths import zygote_paths

    action = sys.argv[1]
    paths = zygote_paths()
    zygote = hello(paths, caller_installation())
    install(paths, zygote, caller_installation())
    ctx = mp.get_context("forkserver")
    if action == "report":  # what the child takes from its caller
        os.umask(0o027)
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (123, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
        os.sched_setaffinity(0, [min(os.sched_getaffinity(0))])  # as `taskset -c N` would
        os.nice(3)
        p = ctx.Process(target=child_targets.report, args=(sys.argv[2],))
        p.start()
        p.join(30)
        _say(
            caller=os.getpid(),
            child=p.pid,
            exitcode=p.exitcode,
            affinity=sorted(os.sched_getaffinity(0)),
            nice=os.getpriority(os.PRIO_PROCESS, 0),
        )
    elif action == "exits":  # exit codes and signals, as Process reports them
        codes = []
        for target, args in ((child_targets.exit_with, (7,)), (time.sleep, (600,))):
            p = ctx.Process(target=target, args=args)
            p.start()
            if target is time.sleep:
                time.sleep(0.2)
                p.terminate()
            p.join(30)
            codes.append(p.exitcode)
        _say(codes=codes)
    elif action == "sleep":  # the test kills this caller: the child must die with it
        p = ctx.Process(target=time.sleep, args=(600,))
        p.start()
        _say(child=p.pid, zygote=zygote)
        time.sleep(600)
    elif action == "crash":  # the zygote dies between requests: fall back
        os.kill(zygote, signal.SIGKILL)
        while os.path.exists(f"/proc/{zygote}") and _state(zygote) != "Z":
            time.sleep(0.02)
        p = ctx.Process(target=child_targets.exit_with, args=(0,))
        p.start()
        p.join(60)
        _say(exitcode=p.exitcode, still_installed=installed() is not None)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


if __name__ == "__main__":
    main()
