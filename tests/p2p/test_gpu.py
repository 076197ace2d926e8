"""The P2P check on this machine's real GPUs (skipped without CUDA)."""

from __future__ import annotations

import time

import pytest
import torch
from rt.core.config import Config, P2PConfig
from rt.core.timeline import Timeline
from rt.plugins import p2p as p2p_plugin
from rt.plugins.p2p.check import check_access
from rt.plugins.p2p.identity import gpu_identity
from rt.plugins.p2p.measure import measure_access, parse_events, probe_command, run_probe

pytestmark = pytest.mark.gpu


def _count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_identity_names_every_gpu_and_the_driver():
    identity = gpu_identity(torch)
    assert len(identity.uuids) == _count() and all(identity.uuids)
    assert identity.driver != "unknown" and identity.driver[0].isdigit()
    assert identity.topology != "unknown"


def test_the_probe_sees_the_gpus_this_process_sees():
    run = run_probe(probe_command([]), timeout_s=120)
    assert run.returncode == 0, run.stderr[-2000:]
    ready = parse_events(run.stdout)[0]
    assert ready["event"] == "ready"
    assert tuple(ready["devices"]) == gpu_identity(torch).uuids


def test_measure_every_pair_of_this_machine():
    uuids = gpu_identity(torch).uuids
    t0 = time.perf_counter()
    m = measure_access(uuids)
    seconds = time.perf_counter() - t0
    table = m.table(uuids)
    n = len(uuids)
    assert len(table.access) == n and all(len(row) == n for row in table.access)
    assert len(m.pairs) == n * (n - 1) // 2
    if n == 1:  # no pairs: nothing to copy, no probe started
        assert m.probes == 0 and table.access == ((True,),) and seconds < 0.5
    else:
        print(
            f"\n{n} GPUs: {m.seconds:.2f} s, {m.probes} probe(s); blocked {table.blocked_pairs()}"
        )
        assert m.probes >= 1


def test_the_hook_returns_this_machines_table(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path))

    class Runtime:
        timeline = Timeline()

    table = p2p_plugin.rt_p2p_check(Config(p2p=P2PConfig(mode="check")), Runtime())
    assert table.devices == gpu_identity(torch).uuids and table.source == "measured"


@pytest.mark.skipif(_count() < 2, reason="one GPU has no pairs: both modes are instant")
def test_cached_is_faster_than_check_on_a_second_call(tmp_path):
    identity = gpu_identity(torch)
    check_access(identity, "check", tmp_path, time.time())  # the first start measures
    t0 = time.perf_counter()
    checked = check_access(identity, "check", tmp_path, time.time())
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = check_access(identity, "cached", tmp_path, time.time())
    cached_s = time.perf_counter() - t0
    print(f"\ncheck {check_s:.3f} s, cached {cached_s:.4f} s")
    assert checked.cache == "miss" and cached.cache == "hit"
    assert cached.table.access == checked.table.access
    assert cached_s < check_s / 10
