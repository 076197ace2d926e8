"""The built-in ``p2p`` plugin's hook, and the TP engine's use of its table
(``plugins/tp/p2p_apply.py``), on CPU: CUDA is faked where the logic needs it."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from rt.core import SkipStage
from rt.core.config import Config, P2PConfig
from rt.core.p2p import P2PTable, RankP2P
from rt.core.timeline import Timeline
from rt.plugins import p2p as p2p_plugin
from rt.plugins.p2p import check as check_module
from rt.plugins.p2p.measure import Measurement, PairResult
from rt.plugins.tp.p2p_apply import configure_nccl_p2p

T, F = True, False


class FakeRuntime:
    def __init__(self, world_size=2, device="cuda:1", state=None, result=None):
        self.world_size = world_size
        self.rank = 1
        self.services = {"device": torch.device(device)}
        self.stage_state = {"p2p-check": state} if state else {}
        self.results = {"p2p-check": result} if result is not None else {}
        self.timeline = Timeline(rank=1)


def _config(mode="cached"):
    return Config(p2p=P2PConfig(mode=mode))


def test_without_cuda_the_stage_is_a_recorded_skip():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SkipStage, match="no CUDA devices"):
        p2p_plugin.rt_p2p_check(_config(), FakeRuntime())


def test_off_skips_before_touching_cuda():
    with pytest.raises(SkipStage, match="p2p.mode is off"):
        p2p_plugin.rt_p2p_check(_config("off"), FakeRuntime())


class Props:
    def __init__(self, d):
        self.uuid = f"GPU-{d}"


@pytest.fixture
def two_fake_gpus(monkeypatch, tmp_path):
    """torch.cuda says two GPUs; measuring finds pair 0-1 broken; the cache is a tmp dir."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", Props)
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: topology "unknown"
    calls = []

    def measure(devices):
        calls.append(devices)
        return Measurement(tuple(devices), (PairResult(0, 1, False, "values changed"),), 0.2, 1)

    monkeypatch.setattr(check_module, "measure_access", measure)
    return calls


def test_the_hook_measures_then_reads_its_cache(two_fake_gpus, tmp_path):
    runtime = FakeRuntime()
    table = p2p_plugin.rt_p2p_check(_config("cached"), runtime)
    assert table.devices == ("GPU-0", "GPU-1") and table.source == "measured"
    assert table.blocked_pairs() == ((0, 1),) and len(two_fake_gpus) == 1
    again = p2p_plugin.rt_p2p_check(_config("cached"), runtime)
    assert again.source == "cache" and again.access == table.access and len(two_fake_gpus) == 1
    assert list((tmp_path / "p2p").glob("*.json"))
    assert p2p_plugin.describe_blocked(again) == "0-1 (values changed)"


def test_check_mode_measures_again_at_a_new_start(two_fake_gpus):
    p2p_plugin.rt_p2p_check(_config("check"), FakeRuntime())
    time.sleep(0.01)
    later = FakeRuntime()
    later.timeline.origin = time.time()  # a process launched after the last measurement
    assert p2p_plugin.rt_p2p_check(_config("check"), later).source == "measured"
    assert len(two_fake_gpus) == 2


# -- the engine's side: NCCL before its first collective ----------------------------


def _gather_of(*others: RankP2P):
    seen = []

    def gather(mine: RankP2P) -> list[RankP2P]:
        seen.append(mine)
        return [mine, *others]

    gather.seen = seen
    return gather


def test_a_blocked_pair_disables_nccl_p2p_on_this_rank(caplog):
    table = P2PTable(("GPU-0", "GPU-1"), [[T, F], [F, T]], "measured")
    runtime = FakeRuntime(state="ok", result=table)
    host = __import__("socket").gethostname()
    gather = _gather_of(RankP2P(host, 0, ((0, 1),)))
    env: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="rt.tp"):
        plan = configure_nccl_p2p(_config(), runtime, gather=gather, environ=env)
    assert env == {"NCCL_P2P_DISABLE": "1"} and plan.devices == (0, 1)
    assert gather.seen == [RankP2P(host, 1, ((0, 1),))], "this rank's GPU is cuda:1"
    span = next(s for s in runtime.timeline.spans() if s.stage == "nccl-p2p")
    assert span.kind == "task" and span.outcome == "ok"
    assert span.notes["nccl"] == "NCCL_P2P_DISABLE=1"
    assert span.notes["plan"] == "no peer access between GPUs 0-1"
    assert "NCCL runs without peer-to-peer transport" in caplog.text


def test_gpus_that_reach_each_other_keep_nccl_defaults():
    table = P2PTable(("GPU-0", "GPU-1"), [[T, T], [T, T]], "cache")
    runtime = FakeRuntime(state="ok", result=table)
    host = __import__("socket").gethostname()
    env: dict[str, str] = {}
    plan = configure_nccl_p2p(
        _config(), runtime, gather=_gather_of(RankP2P(host, 0, ())), environ=env
    )
    assert env == {} and plan.env == {}
    span = next(s for s in runtime.timeline.spans() if s.stage == "nccl-p2p")
    assert span.notes["nccl"] == "defaults" and span.notes["table"] == "p2p-check table (cache)"


def test_the_users_own_nccl_setting_is_kept():
    table = P2PTable(("GPU-0", "GPU-1"), [[T, F], [F, T]], "measured")
    runtime = FakeRuntime(state="ok", result=table)
    host = __import__("socket").gethostname()
    env = {"NCCL_P2P_LEVEL": "NVL"}
    configure_nccl_p2p(_config(), runtime, gather=_gather_of(RankP2P(host, 0, ())), environ=env)
    assert env == {"NCCL_P2P_LEVEL": "NVL"}
    span = next(s for s in runtime.timeline.spans() if s.stage == "nccl-p2p")
    assert span.notes["nccl"] == "kept NCCL_P2P_LEVEL=NVL"


def test_a_skipped_check_leaves_nccl_alone():
    runtime = FakeRuntime(state="skipped")
    host = __import__("socket").gethostname()
    env: dict[str, str] = {}
    plan = configure_nccl_p2p(
        _config(), runtime, gather=_gather_of(RankP2P(host, 0, None)), environ=env
    )
    assert env == {} and plan.reason == "no P2P table: NCCL keeps its defaults"


@pytest.mark.parametrize("world_size,device", [(1, "cuda:0"), (2, "cpu")])
def test_nothing_happens_on_cpu_or_at_tp_1(world_size, device):
    runtime = FakeRuntime(world_size=world_size, device=device, state="running")
    env: dict[str, str] = {}

    def gather(mine):
        raise AssertionError("no collective where NCCL is not used")

    assert configure_nccl_p2p(_config(), runtime, gather=gather, environ=env) is None
    assert env == {} and not runtime.timeline.spans()


def test_kv_cache_settles_nccl_before_its_profiling_prefill(monkeypatch):
    """The profiling forwards in kv-cache run NCCL's first collective: the P2P plan first."""
    from rt.plugins.tp import hooks, memory_profile, p2p_apply

    order: list[str] = []
    monkeypatch.setattr(p2p_apply, "configure_nccl_p2p", lambda c, r: order.append("p2p"))

    def budget(config, runner):
        order.append("profile")
        return 1 << 20, {}

    monkeypatch.setattr(memory_profile, "kv_cache_budget", budget)

    class Runner:
        block_size = 16
        device = torch.device("cpu")

        class kv_spec:
            @staticmethod
            def num_blocks_for_budget(budget):
                return 4

        def allocate_kv_cache(self, n):
            order.append("allocate")

        def kv_bytes_per_block(self):
            return 1

    runtime = FakeRuntime(world_size=1, device="cpu")
    runtime.results["load-weights"] = Runner()
    runtime.result = runtime.results.__getitem__
    hooks.rt_allocate_kv_cache(_config(), runtime)
    assert order == ["p2p", "profile", "allocate"]
