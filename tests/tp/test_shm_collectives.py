"""Shared-memory collectives on three spawned CPU ranks: the same results as gloo, on
every rank bit for bit, gloo for tensors larger than a slot, and a dead rank named."""

from __future__ import annotations

import os
import platform

import torch
from rt.plugins.tp.parallel import ParallelContext

from .ranks import run_ranks

SLOT_BYTES = 4096


def _open(ctx: ParallelContext):
    from rt.plugins.tp.shm_collectives import open_shm_collectives

    comm, how = open_shm_collectives(ctx.rank, ctx.world_size, ctx.device, ctx.group, SLOT_BYTES)
    assert comm is not None, how
    return comm


def _collectives(ctx: ParallelContext) -> dict:
    import torch.distributed as dist

    comm = _open(ctx)
    comm.all_reduce(torch.zeros(1))  # rank 0 drops the name before it gets here
    leftover = [n for n in os.listdir("/dev/shm") if n.startswith("rt-tp-")]
    out: dict = {"leftover": leftover, "sums": [], "gathers": [], "gloo": []}
    for call in range(7):  # more calls than the two alternating buffers
        dtype = torch.bfloat16 if call % 3 == 2 else torch.float32
        g = torch.Generator().manual_seed(100 * call + ctx.rank)
        x = torch.randn(3, 50 + call, generator=g).to(dtype)
        expected = x.clone()
        dist.all_reduce(expected)
        out["gloo"].append(expected)
        out["sums"].append(comm.all_reduce(x.clone()))
        out["gathers"].append(comm.all_gather_last_dim(x[:, : 5 + call]))
    big = torch.full((SLOT_BYTES // 4 + 1,), float(ctx.rank))  # one element past a slot
    out["big_gather"] = comm.all_gather_last_dim(big.view(1, -1))[:, :: big.numel()].tolist()
    out["big_sum"] = comm.all_reduce(big)[0].item()
    return out


def test_results_match_gloo_and_agree_across_ranks():
    results = run_ranks(3, _collectives)
    for r in results:
        assert r["leftover"] == [], "the segment's name is gone by the first collective"
        for got, gloo in zip(r["sums"], r["gloo"], strict=True):
            bf16 = got.dtype == torch.bfloat16
            # bf16: gloo rounds after each addition, torch.sum once at the end
            torch.testing.assert_close(
                got, gloo, rtol=2e-2 if bf16 else 1e-6, atol=1e-2 if bf16 else 1e-5
            )
        assert r["big_sum"] == 0 + 1 + 2, "a tensor larger than a slot goes through gloo"
        assert r["big_gather"] == [[0.0, 1.0, 2.0]]
    for call in range(7):
        sums = [r["sums"][call] for r in results]
        assert all(torch.equal(s, sums[0]) for s in sums), "every rank gets the same bits"
        gathers = [r["gathers"][call] for r in results]
        assert all(torch.equal(g, gathers[0]) for g in gathers)
        width = 5 + call
        assert gathers[0].shape == (3, 3 * width)
        # rank r's part is rank r's own input, in rank order
        for rank in range(3):
            g = torch.Generator().manual_seed(100 * call + rank)
            dtype = torch.bfloat16 if call % 3 == 2 else torch.float32
            mine = torch.randn(3, 50 + call, generator=g).to(dtype)[:, :width]
            assert torch.equal(gathers[0][:, rank * width : (rank + 1) * width], mine)


def _survivor(ctx: ParallelContext) -> str:
    from rt.core.errors import EngineDead

    comm = _open(ctx)
    comm.all_reduce(torch.ones(4))
    if ctx.rank == 2:
        os._exit(0)  # gone without a word, as a killed rank is
    try:
        comm.all_reduce(torch.ones(4))
    except EngineDead as e:
        return str(e)
    return "no error"


def test_a_dead_rank_is_named_instead_of_a_hang():
    errors = run_ranks(3, _survivor, timeout=30, answering=(0, 1))
    for error in errors:
        assert "rank 2" in error and "died" in error, error


def test_cpu_x86_ranks_are_supported_and_gpus_are_not():
    from rt.plugins.tp.shm_collectives import supported

    assert "cuda" in supported(torch.device("cuda", 0))
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert supported(torch.device("cpu")) is None
    else:
        assert "gloo" in supported(torch.device("cpu"))
