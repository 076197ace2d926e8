"""The entry point of a worker rank process.

A rank joins the process group, builds its own plugin manager from the driver's
frozen selection, runs the ``ranks`` stages of the startup graph, reports its
timeline to the driver, and then executes every step the driver broadcasts
until it is told to shut down. Rank 0 has a process of its own only with
``parallel.rank0 = "process"``: it then takes the driver's steps over a pipe,
passes them on to the other ranks, runs its shard and samples (``executor.py``).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import threading
import time
import traceback
from multiprocessing.connection import Connection

import attrs
from rt.core.channel import ControlMessage
from rt.core.config import Config
from rt.core.errors import StageFailed, user_error
from rt.core.selection import Selection
from rt.core.step import StepMetadata
from rt.core.timeline import Span


@attrs.frozen
class RankSpec:
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    config: Config
    selection: Selection


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the driver dies, so no rank outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def rank_main(
    spec: RankSpec,
    conn: Connection | None,
    driver_steps: Connection | None = None,
    store_listener: socket.socket | None = None,
) -> None:
    """Run one worker rank to the end. ``conn`` reports to a driver on this node;
    a rank started by ``rt worker`` on another node has none. ``driver_steps``:
    rank 0's step pipe from the driver; ``store_listener``: rank 0's listening socket
    for the rendezvous store (``distributed.init_distributed``)."""
    entered = time.time()  # forked and handed its spec
    if conn is not None:
        _die_with_parent()
    # What the forkserver imported (torch: hundreds of thousands of objects) is there
    # for the life of the process. Frozen, the collector never walks it: a full
    # collection took ~0.1 s of a rank's startup, and walking it would also copy the
    # pages this process still shares with the forkserver.
    gc.freeze()
    import torch
    from rt.core.startup import create_runtime, run_startup
    from rt.plugins.tp.distributed import destroy_distributed, init_distributed, pick_device

    torch.set_num_threads(1)  # the step loop takes the rank's threads (bind_compute_thread)
    runtime = None
    try:
        # a rank the driver started here is local rank ``rank``; `rt worker` has no conn
        local_rank = spec.rank if conn is not None else None
        device = pick_device(spec.rank, spec.config.parallel.device, local_rank)
        groups = None
        if spec.world_size > 1:
            groups = init_distributed(
                spec.rank,
                spec.world_size,
                spec.master_addr,
                spec.master_port,
                spec.config.parallel.backend,
                device,
                store_listener,
                spec.config.parallel.collective_timeout_s,
            )
        joined = time.time()
        runtime = create_runtime(
            spec.config,
            spec.selection,
            rank=spec.rank,
            world_size=spec.world_size,
            only_where="ranks",
            driver=False,
        )
        runtime.timeline.add([_joined_span(spec, entered, joined, groups)])
        runtime.services["process_groups"] = groups
        runtime.services["device"] = device
        run_startup(runtime)
        if conn is not None:
            spans = [s.to_dict() for s in runtime.timeline.spans()]
            conn.send(("ready", spans, _engine_info(runtime) if driver_steps else None))
        if driver_steps is not None:
            _serve_driver(runtime, driver_steps)
        else:
            _serve_steps(runtime)
    except BaseException as e:
        if conn is None:
            raise
        # A failed stage's message carries its traceback already; anything else sends its own.
        if isinstance(e, StageFailed):
            report = ("error", str(e), "")
        else:
            report = ("error", f"{type(e).__name__}: {e}", traceback.format_exc())
        # An error the user can fix (a bad checkpoint, say) travels as its class and
        # message too, so the driver raises the same and the CLI prints one line.
        user = user_error(e)
        stage = e.stage if isinstance(e, StageFailed) else None
        report += ((type(user).__name__, str(user), stage) if user is not None else None,)
        try:
            conn.send(report)
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        if runtime is not None:
            runtime.shutdown()
        destroy_distributed()


def _joined_span(spec: RankSpec, entered: float, joined: float, groups: dict | None) -> Span:
    """The rank's part of ``workers``: from its start (forked, spec read) until it has
    joined the process group, which waits for the last rank to be forked. Without it a
    timeline shows a gap between the driver's ``workers`` and each rank's first stage."""
    joined_what = "none: one rank"
    if groups is not None:
        import torch.distributed as dist

        joined_what = f"{spec.world_size} ranks ({dist.get_backend(groups['world'])})"
    return Span(
        stage="workers",
        plugin="tp",
        rank=spec.rank,
        pid=os.getpid(),
        thread=threading.current_thread().name,
        start=entered,
        end=joined,
        outcome="ok",
        kind="task",
        notes={"process_group": joined_what},
    )


def _engine_info(runtime) -> object:
    """What the driver's engine needs to know from rank 0 (``executor.EngineInfo``)."""
    from rt.plugins.tp.engine_factory import engine_info

    return engine_info(runtime.result("load-weights"), runtime.result("kv-cache"))


def _serve_driver(runtime, steps: Connection) -> None:
    """Rank 0 in its own process: run every step the driver sends over ``steps``."""
    from rt.plugins.tp.engine_factory import local_executor
    from rt.plugins.tp.executor import serve_driver

    channel = runtime.results.get("metadata-broadcast")
    serve_driver(steps, local_executor(runtime.result("load-weights"), channel))


def _serve_steps(runtime) -> None:
    channel = runtime.results.get("metadata-broadcast")
    runner = runtime.result("load-weights")
    if channel is None:
        raise RuntimeError(
            "a worker rank needs a metadata channel; the metadata-broadcast stage was skipped"
        )
    runner.bind_compute_thread()
    while True:
        message = channel.recv()  # an idle driver sends a heartbeat well within any timeout
        if isinstance(message, StepMetadata):
            runner.run(message)
            runner.prompt_logprobs(message)  # its projections' collectives, if it has any
        elif isinstance(message, ControlMessage) and message.kind == "shutdown":
            return
