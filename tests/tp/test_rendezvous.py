"""Rank 0 serves the rendezvous store on the socket the driver put in listening state
before starting any rank, so a rank that gets there first is queued, not refused."""

from __future__ import annotations

import multiprocessing as mp

import torch
from rt.core.host import listening_socket
from rt.plugins.tp.distributed import destroy_distributed, init_distributed


def _rank(rank: int, port: int, listener, started, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        started.set()
        init_distributed(rank, 2, "127.0.0.1", port, "gloo", torch.device("cpu"), listener)
        x = torch.tensor([float(rank + 1)])
        dist.all_reduce(x)
        store = dist.distributed_c10d._get_default_store()
        while hasattr(store, "underlying_store"):  # a PrefixStore over the TCPStore
            store = store.underlying_store
        taken_over = listener is not None and listener.fileno() == -1
        results.put((rank, x.item(), getattr(store, "port", None), taken_over, None))
    except BaseException as e:  # reported, not raised: the test names the rank
        results.put((rank, None, None, None, f"{type(e).__name__}: {e}"))
    finally:
        destroy_distributed()


def test_rank_0_serves_the_store_on_the_driver_s_listening_socket():
    ctx = mp.get_context("forkserver")
    listener = listening_socket("127.0.0.1")
    port = listener.getsockname()[1]
    results = ctx.Queue()
    first, second = ctx.Event(), ctx.Event()
    # Rank 1 starts first and connects while nothing has accepted yet.
    r1 = ctx.Process(target=_rank, args=(1, port, None, first, results))
    r1.start()
    assert first.wait(60)
    r0 = ctx.Process(target=_rank, args=(0, port, listener, second, results))
    r0.start()
    listener.close()  # rank 0 has its own copy
    try:
        got = {}
        for _ in range(2):
            rank, total, store_port, taken_over, error = results.get(timeout=120)
            assert error is None, f"rank {rank}: {error}"
            got[rank] = (total, store_port, taken_over)
    finally:
        for p in (r0, r1):
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert got[0] == (3.0, port, True), "rank 0 serves the store on the socket it was given"
    assert got[1][0] == 3.0 and got[1][1] == port
