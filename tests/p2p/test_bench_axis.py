"""``rt bench startup --p2p check,cached,table``: the P2P check's cost as a variant axis."""

from __future__ import annotations

import json

import pytest
from rt.plugins.bench import startup
from rt.plugins.bench.startup_variants import build_variants, ratio_terms

from tests.http.test_bench_startup import _args, _cli, _fake_runs


def test_each_p2p_mode_is_a_variant_that_sets_p2p_mode():
    variants = build_variants([2], None, None, False, False, ["check", "cached"])
    assert [v.name for v in variants] == ["tp=2 p2p=check fast", "tp=2 p2p=cached fast"]
    assert variants[1].server_args(["--set", "p2p.mode=off"])[-2:] == ["--set", "p2p.mode=cached"]
    assert ratio_terms(variants) == [
        ("tp=2 p2p=cached / tp=2 p2p=check", "tp=2 p2p=cached fast", "tp=2 p2p=check fast")
    ]


def test_the_axis_crosses_the_others_without_mixing_them_up():
    variants = build_variants([1, 2], None, ["off"], True, False, ["check", "table"])
    names = [v.name for v in variants]
    assert "tp=2 compile=off p2p=table sequential" in names and len(names) == 9  # with the floor
    labels = [label for label, _, _ in ratio_terms(variants)]
    assert "tp=2 compile=off p2p=table sequential / fast" in labels
    assert "tp=2 compile=off p2p=table / tp=1 compile=off p2p=table" in labels
    assert "tp=2 compile=off p2p=table / tp=2 compile=off p2p=check" in labels


def test_bench_startup_runs_each_p2p_mode(monkeypatch, capsys, tmp_path):
    order: list[str] = []
    calls = _fake_runs(monkeypatch, tmp_path, order)
    args = _args(["--p2p", "check,cached", "--runs", "1", "--json"])
    assert startup.bench_startup(args, _cli()) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["variants"]) == ["tp=1 p2p=check fast", "tp=1 p2p=cached fast"]
    # one untimed start per mode (the cached one fills its cache), then a timed round
    assert [c["extra"][-1] for c in calls] == ["p2p.mode=check", "p2p.mode=cached"] * 2


def test_a_bad_p2p_mode_fails_before_any_start(monkeypatch, tmp_path):
    order: list[str] = []
    _fake_runs(monkeypatch, tmp_path, order)
    with pytest.raises(Exception, match="--p2p: unknown value 'fast'"):
        startup.bench_startup(_args(["--p2p", "check,fast"]), _cli())
    assert order == []
