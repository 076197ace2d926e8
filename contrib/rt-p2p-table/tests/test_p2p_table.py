"""The hardware-table P2P plugin: table parsing, matching, and taking over the stage."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from rt.core import ConfigError, Stage, hookimpl
from rt.core.config import Config, P2PConfig, StartupConfig
from rt.core.discovery import Catalog
from rt.core.p2p import RankP2P, nccl_p2p_plan
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup
from rt_p2p_table import plugin
from rt_p2p_table.table import load_systems, lookup

HERE = Path(__file__).resolve().parent.parent


def test_entry_point_is_declared():
    data = tomllib.loads((HERE / "pyproject.toml").read_text())
    assert data["project"]["entry-points"]["rt.plugins"] == {"p2p-table": "rt_p2p_table.plugin"}


def test_shipped_table_matches_an_8_gpu_h100_box():
    table = lookup(load_systems(), ["NVIDIA H100 80GB HBM3"] * 8, [f"GPU-{i}" for i in range(8)])
    assert table is not None and table.all_pairs and table.devices[3] == "GPU-3"
    assert table.source.startswith("hardware-table:DGX H100")
    assert lookup(load_systems(), ["NVIDIA H100 80GB HBM3"] * 3, ["a", "b", "c"]) is None


def test_user_table_comes_first_and_may_give_a_matrix(tmp_path, monkeypatch):
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[[system]]\nname = "lab box"\ngpu = "NVIDIA H100 80GB HBM3"\ncount = 2\n'
        "access = [[true, false], [false, true]]\n"
    )
    monkeypatch.setenv("RT_P2P_TABLE", str(mine))
    table = lookup(load_systems(), ["NVIDIA H100 80GB HBM3"] * 2, ["a", "b"])
    assert table.source == "hardware-table:lab box" and not table.can_access(0, 1)
    # what the TP engine makes of it before NCCL starts (rt.core.p2p)
    assert table.blocked_pairs() == ((0, 1),)
    ranks = [RankP2P("node", d, table.blocked_pairs()) for d in (0, 1)]
    assert nccl_p2p_plan(ranks, "node").env == {"NCCL_P2P_DISABLE": "1"}


def test_bad_tables_name_the_problem(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[system]]\nname = "x"\ngpu = "G"\ncount = 2\naccess = [[true]]\n')
    monkeypatch.setenv("RT_P2P_TABLE", str(bad))
    with pytest.raises(ConfigError, match=r"system 'x' needs a 2x2 access matrix"):
        load_systems()
    monkeypatch.setenv("RT_P2P_TABLE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=r"cannot read hardware table"):
        load_systems()


class MeasuringBuiltin:
    """Stands in for the built-in p2p plugin (trylast), which would probe the GPUs."""

    def __init__(self):
        self.calls = 0

    @hookimpl(trylast=True)
    def rt_p2p_check(self):
        self.calls += 1
        return "measured"


def _run(monkeypatch, devices, mode="cached"):
    monkeypatch.setattr(plugin, "visible_devices", lambda: devices)
    stage = Stage(name="p2p-check", hook="rt_p2p_check")
    builtin = MeasuringBuiltin()
    rt = create_runtime(
        Config(startup=StartupConfig(print_timeline=False), p2p=P2PConfig(mode=mode)),
        select(Catalog((), ()), []),
        extra_plugins=[("builtin", builtin), ("p2p-table", plugin)],
        extra_stages=[stage],
    )
    run_startup(rt)
    return rt, builtin


def test_a_known_system_is_answered_from_the_table(monkeypatch):
    rt, builtin = _run(monkeypatch, (["NVIDIA H100 80GB HBM3"] * 8, [f"GPU-{i}" for i in range(8)]))
    assert rt.results["p2p-check"].source.startswith("hardware-table:")
    span = next(s for s in rt.timeline.stage_spans() if s.stage == "p2p-check")
    assert span.plugin == "p2p-table" and builtin.calls == 0, "the built-in never probed"


@pytest.mark.parametrize("mode", ["cached", "table"])
def test_the_table_answers_in_cached_and_table_modes(monkeypatch, mode):
    rt, builtin = _run(monkeypatch, (["NVIDIA H100 80GB HBM3"] * 8, list("abcdefgh")), mode)
    assert rt.results["p2p-check"].source.startswith("hardware-table:") and builtin.calls == 0


def test_check_mode_measures_even_on_a_known_system(monkeypatch):
    rt, builtin = _run(monkeypatch, (["NVIDIA H100 80GB HBM3"] * 8, list("abcdefgh")), "check")
    assert rt.results["p2p-check"] == "measured" and builtin.calls == 1
    span = next(s for s in rt.timeline.stage_spans() if s.stage == "p2p-check")
    assert "p2p-table: p2p.mode is check" in span.reason


def test_an_unknown_system_falls_back_to_measuring(monkeypatch):
    rt, builtin = _run(monkeypatch, (["Some GPU"] * 2, ["a", "b"]))
    assert rt.results["p2p-check"] == "measured" and builtin.calls == 1
    span = next(s for s in rt.timeline.stage_spans() if s.stage == "p2p-check")
    assert "no hardware-table entry for 2 x Some GPU" in span.reason


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device; none on this machine")
def test_visible_devices_reads_real_gpus():
    names, ids = plugin.visible_devices()
    assert names and len(names) == len(ids) and all(ids)
