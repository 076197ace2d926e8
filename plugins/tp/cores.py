"""CPU cores per rank, without importing torch at import time (the weights plan needs it too)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from rt.core.host import usable_cores

T = TypeVar("T")


def threads_per_rank(world_size: int) -> int:
    """Split the CPU cores between the ranks of this node, so they do not oversubscribe."""
    return max(1, usable_cores() // world_size)


def cores_shared(device_type: str, local_ranks: int) -> str | None:
    """Why this node's CPU ranks take turns on its cores (for the timeline), or None.

    With more ranks than cores each rank runs one thread, and between two of a step's
    collectives a rank that found no free core runs while the others wait for it: TP=3
    on 2 cores decodes slower than TP=1 there (docs/startup.md).
    """
    cores = usable_cores()
    if device_type != "cpu" or local_ranks <= cores:
        return None
    return (
        f"{local_ranks} ranks on {cores} CPU cores take turns: each collective waits for "
        f"the rank that runs last (up to {cores} ranks run side by side)"
    )


def run_with_threads(fn: Callable[[], T], threads: int) -> T:
    """``fn()`` with ``threads`` torch threads, in a thread of its own; its exception is
    re-raised here.

    A thread that runs a parallel torch op keeps an OpenMP team while it lives, and one
    left in a loading thread slows every later step (ModelRunner.bind_compute_thread):
    this thread's team ends with it.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            result.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name="rt-parallel-work")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]
