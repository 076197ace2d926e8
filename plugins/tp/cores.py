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
