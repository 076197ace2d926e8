"""Run a function on N spawned CPU ranks joined in a gloo group (TP tests)."""

from __future__ import annotations

import pickle
import traceback

import torch
import torch.multiprocessing as mp
from rt.core.host import free_port
from rt.plugins.tp.parallel import ParallelContext


def _rank_main(rank: int, world_size: int, port: int, fn, args, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
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
    port = free_port()
    procs = [
        spawn.Process(target=_rank_main, args=(r, world_size, port, fn, args, results))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
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
