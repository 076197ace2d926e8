"""Run a function on N spawned CPU ranks joined in a gloo group (TP tests)."""

from __future__ import annotations

import pickle
import traceback

import torch
import torch.multiprocessing as mp
from rt.core.host import listening_socket
from rt.plugins.tp.distributed import init_distributed
from rt.plugins.tp.parallel import ParallelContext


def _rank_main(rank: int, world_size: int, port: int, listener, fn, args, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        # rt's own rendezvous: rank 0 serves the store on the parent's listening socket
        init_distributed(rank, world_size, "127.0.0.1", port, "gloo", torch.device("cpu"), listener)
        value = fn(ParallelContext.from_distributed("cpu"), *args)
        # plain pickle copies tensors by value; the queue's own pickler would share them
        # through file descriptors that die with this process
        results.put((rank, pickle.dumps(value), None))
    except BaseException:
        results.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(
    world_size: int, fn, *args, timeout: float = 120.0, answering: tuple[int, ...] | None = None
) -> list:
    """Run ``fn(ctx, *args)`` on ``world_size`` spawned gloo ranks; return the results of
    the ``answering`` ranks (default: all; a rank that exits on purpose does not answer)
    in rank order. ``fn`` must be a module-level function."""
    answering = tuple(range(world_size)) if answering is None else answering
    spawn = mp.get_context("spawn")
    results = spawn.Queue()
    listener = listening_socket("127.0.0.1")
    port = listener.getsockname()[1]
    procs = [
        spawn.Process(
            target=_rank_main,
            args=(r, world_size, port, listener if r == 0 else None, fn, args, results),
        )
        for r in range(world_size)
    ]
    try:
        for p in procs:
            p.start()
    finally:
        listener.close()  # rank 0 has its own copy
    try:
        got = dict()
        for _ in answering:
            rank, value, error = results.get(timeout=timeout)
            if error:
                raise AssertionError(f"rank {rank} failed:\n{error}")
            got[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [got[r] for r in answering]
