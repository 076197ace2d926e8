"""``rt.core.p2p``: the table record, the NCCL plan a node's ranks agree on, and waiting
for the background p2p-check stage."""

from __future__ import annotations

import threading
import time

import pytest
from rt.core import Stage, hookimpl
from rt.core.config import Config, StartupConfig
from rt.core.discovery import Catalog
from rt.core.p2p import (
    NcclP2PPlan,
    P2PTable,
    RankP2P,
    nccl_environment,
    nccl_p2p_plan,
    wait_for_p2p_table,
)
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup

T, F = True, False


def test_blocked_pairs_and_reasons():
    table = P2PTable(
        ("a", "b", "c"),
        [[T, T, F], [T, T, T], [T, T, T]],  # 0 -> 2 fails one way only
        "measured",
        [(0, 2, "values changed")],
    )
    assert table.blocked_pairs() == ((0, 2),)
    assert table.blocked_pairs(among=[0, 1]) == ()
    assert table.blocked_pairs(among=[2, 0, 7]) == ((0, 2),)  # 7: not in the table
    assert table.reason(2, 0) == "values changed" and table.reason(0, 1) is None
    assert not table.all_pairs and table.can_access(2, 0) and not table.can_access(0, 2)


def test_a_table_must_be_square():
    with pytest.raises(ValueError, match=r"P2PTable of 2 devices needs a 2x2 access matrix"):
        P2PTable(("a", "b"), [[True]], "measured")
    one = P2PTable(["a"], [[1]], "measured")  # lists and ints convert
    assert one.devices == ("a",) and one.access == ((True,),) and one.blocked_pairs() == ()


def test_nccl_environment():
    assert nccl_environment([]) == {}
    assert nccl_environment([(0, 1)]) == {"NCCL_P2P_DISABLE": "1"}


def test_plan_takes_the_pairs_among_this_nodes_gpus():
    ranks = [
        RankP2P("a", 0, ((2, 3),)),  # a pair this node's ranks do not use
        RankP2P("a", 1, ((2, 3),)),
        RankP2P("b", 0, ((0, 1),)),  # another node's trouble is its own
        RankP2P("b", 1, ((0, 1),)),
    ]
    plan = nccl_p2p_plan(ranks, "a")
    assert plan.env == {} and plan.devices == (0, 1) and "reach each other" in plan.reason
    plan = nccl_p2p_plan(ranks, "b")
    assert plan.env == {"NCCL_P2P_DISABLE": "1"} and plan.blocked == ((0, 1),)
    assert plan.reason == "no peer access between GPUs 0-1"


def test_plan_is_the_union_of_the_ranks_tables():
    # rank 1's table (say, measured later) finds what rank 0's missed: both disable.
    ranks = [RankP2P("a", 0, ()), RankP2P("a", 1, ((0, 1),))]
    assert nccl_p2p_plan(ranks, "a").env == {"NCCL_P2P_DISABLE": "1"}
    no_tables = [RankP2P("a", 0, None), RankP2P("a", 1, None)]
    assert nccl_p2p_plan(no_tables, "a") == NcclP2PPlan(
        {}, (0, 1), (), "no P2P table: NCCL keeps its defaults"
    )
    alone = nccl_p2p_plan([RankP2P("a", 0, ((0, 1),)), RankP2P("b", 1, None)], "a")
    assert alone.env == {} and "one GPU" in alone.reason


class SlowTable:
    """A p2p-check plugin that answers after a while, as a probe would."""

    def __init__(self, table, delay=0.3):
        self.table, self.delay = table, delay

    @hookimpl
    def rt_p2p_check(self):
        time.sleep(self.delay)
        return self.table


class Waiter:
    """A foreground stage that waits for the background p2p-check, as kv-cache does."""

    def __init__(self):
        self.got = None

    @hookimpl
    def rt_warmup(self, runtime):
        started = time.monotonic()
        table, status = wait_for_p2p_table(runtime, timeout_s=10)
        self.got = (table, status, time.monotonic() - started)
        return ["waited"]


def _runtime(plugins):
    stages = [
        Stage(name="p2p-check", hook="rt_p2p_check", where="ranks", background=True),
        Stage(name="warmup", hook="rt_warmup"),
    ]
    return create_runtime(
        Config(startup=StartupConfig(print_timeline=False)),
        select(Catalog((), ()), []),
        extra_plugins=plugins,
        extra_stages=stages,
    )


def test_a_stage_waits_for_the_background_table():
    table = P2PTable(("a", "b"), [[T, F], [F, T]], "measured")
    waiter = Waiter()
    rt = _runtime([("slow", SlowTable(table)), ("waiter", waiter)])
    run_startup(rt)
    got, status, waited = waiter.got
    assert got == table and status == "p2p-check table (measured)" and waited >= 0.2


class Skipper:
    @hookimpl
    def rt_p2p_check(self):
        from rt.core import SkipStage

        raise SkipStage("no CUDA devices")


def test_a_skipped_check_gives_no_table_and_says_why():
    waiter = Waiter()
    run_startup(_runtime([("skipper", Skipper()), ("waiter", waiter)]))
    table, status, _ = waiter.got
    assert table is None and status == "p2p-check skipped: skipper: no CUDA devices"


def test_waiting_gives_up_at_the_timeout_and_without_the_stage():
    class FakeRuntime:
        stage_state = {"p2p-check": "running"}

    t0 = time.monotonic()
    assert wait_for_p2p_table(FakeRuntime(), timeout_s=0.1) == (
        None,
        "p2p-check still running after 0 s",
    )
    assert time.monotonic() - t0 < 2
    FakeRuntime.stage_state = {}
    assert wait_for_p2p_table(FakeRuntime(), 1)[1] == "no p2p-check stage in this startup graph"


def test_a_result_that_is_not_a_table_is_not_used():
    class FakeRuntime:
        stage_state = {"p2p-check": "ok"}
        results = {"p2p-check": "measured"}

    assert wait_for_p2p_table(FakeRuntime(), 1) == (
        None,
        "p2p-check returned str, not a P2PTable",
    )


def test_the_wait_ends_when_another_thread_finishes_the_stage():
    class FakeRuntime:
        stage_state = {"p2p-check": "running"}
        results: dict = {}

    rt = FakeRuntime()
    table = P2PTable(("a",), [[T]], "cache")

    def finish():
        time.sleep(0.1)
        rt.results["p2p-check"] = table
        rt.stage_state["p2p-check"] = "ok"

    threading.Thread(target=finish).start()
    assert wait_for_p2p_table(rt, 5)[0] is table
