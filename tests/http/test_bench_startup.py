"""``rt bench startup`` takes turns between its variants and warms the page cache before
each warm run, so drift in the machine's speed does not bias the ratios."""

from __future__ import annotations

import argparse
import json
import types

from rt.plugins.bench import startup


def test_variants_take_turns_and_warm_runs_start_warm(monkeypatch, capsys, tmp_path):
    order: list[str] = []
    clock = iter(range(1, 1000))

    def serve_once(model, tp, extra, cold):
        kind = "cold" if cold else ("sequential" if "--sequential-startup" in extra else "fast")
        order.append(f"{kind}{tp}")
        t = float(next(clock))
        return {"health_s": t, "ready_s": t, "first_completion_s": t, "stages": {"warmup": 0.1}}

    def floor_once():
        order.append("floor")
        return {"first_completion_s": float(next(clock))}

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 100)
    monkeypatch.setattr(startup, "serve_once", serve_once)
    monkeypatch.setattr(startup, "floor_once", floor_once)
    monkeypatch.setattr(startup, "_model_files", lambda cli, args: [weights])
    monkeypatch.setattr(startup, "_read_back", lambda files: order.append("read-back"))
    args = argparse.Namespace(model=None, tp="1", runs=2, cold=True, compare=True, json=True)
    cli = types.SimpleNamespace(early=argparse.Namespace(plugins=None, set=None, profile=None))

    assert startup.bench_startup(args, cli) == 0
    warm = "read-back"
    one_round = [warm, "floor", warm, "sequential1", warm, "fast1", "cold1"]
    assert order == ["fast1", *one_round, *one_round]  # an untimed start, then two rounds
    out = json.loads(capsys.readouterr().out)
    assert [r["first_completion_s"] for r in out["variants"]["tp=1 fast"]["runs"]] == [4.0, 8.0]


def test_paired_ratios_take_each_rounds_ratio_then_the_median():
    def runs(*times):
        return [{"first_completion_s": t} for t in times]

    all_runs = {
        startup.FLOOR: runs(1.0, 2.0, 4.0),
        "tp=1 sequential": runs(3.0, 3.0, 12.0),
        "tp=1 fast": runs(1.5, 2.0, 10.0),
    }
    # per round: fast / floor 1.5, 1.0, 2.5; sequential / fast 2.0, 1.5, 1.2
    paired = startup._paired_ratios(all_runs, [1])
    assert paired == {"tp=1 fast / floor": 1.5, "tp=1 sequential / fast": 1.5}
    medians = {startup.FLOOR: 2.0, "tp=1 sequential": 3.0, "tp=1 fast": 2.0}
    ratios = startup._ratios({k: {"first_completion_s": t} for k, t in medians.items()}, [1])
    assert ratios == {"tp=1 fast / floor": 1.0, "tp=1 sequential / fast": 1.5}
