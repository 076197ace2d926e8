"""``rt bench startup`` takes turns between its variants and warms the page cache before
each warm run, so drift in the machine's speed does not bias the ratios; profiles and
compile modes are variant axes like ``--tp``, and a background compile is waited for."""

from __future__ import annotations

import argparse
import json
import types

import pytest
from rt.core import UsageError
from rt.core.cli import main
from rt.plugins.bench import startup, startup_once_up
from rt.plugins.bench.startup_variants import FLOOR, build_variants, paired_ratios, ratios


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    startup.register(parser.add_subparsers())
    return parser.parse_args(["startup", *argv])


def _cli(profile: str | None = None, modes: dict[str | None, str] | None = None):
    """What the handler reads of the CLI: early options, and the config per profile."""
    modes = modes or {}

    def config(args, extra=(), profile=None):
        return types.SimpleNamespace(compile=types.SimpleNamespace(mode=modes.get(profile, "off")))

    early = argparse.Namespace(plugins=None, set=None, profile=profile, config=None)
    return types.SimpleNamespace(early=early, config=config)


def _fake_runs(monkeypatch, tmp_path, order: list[str]) -> list[dict]:
    clock = iter(range(1, 1000))
    calls: list[dict] = []

    def serve_once(model, tp, extra, cold, decode_tokens=0, switch_timeout=None):
        kind = "cold" if cold else ("sequential" if "--sequential-startup" in extra else "fast")
        order.append(f"{kind}{tp}")
        calls.append({"extra": extra, "decode": decode_tokens, "switch": switch_timeout})
        t = float(next(clock))
        run = {"health_s": t, "ready_s": t, "first_completion_s": t, "stages": {"warmup": 0.1}}
        run["decode_tok_s"] = 100.0 if decode_tokens else None
        if switch_timeout is not None:
            run.update(switch_s=t + 10, decode_tok_s_after=200.0, compile_s=5.0)
        return run

    def floor_once():
        order.append("floor")
        return {"first_completion_s": float(next(clock))}

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 100)
    monkeypatch.setattr(startup, "serve_once", serve_once)
    monkeypatch.setattr(startup, "floor_once", floor_once)
    monkeypatch.setattr(startup, "_model_files", lambda cli, args: [weights])
    monkeypatch.setattr(startup, "_read_back", lambda files: order.append("read-back"))
    return calls


def test_variants_take_turns_and_warm_runs_start_warm(monkeypatch, capsys, tmp_path):
    order: list[str] = []
    _fake_runs(monkeypatch, tmp_path, order)
    args = _args(["--runs", "2", "--cold", "--compare", "--json"])

    assert startup.bench_startup(args, _cli()) == 0
    warm = "read-back"
    one_round = [warm, "floor", warm, "sequential1", warm, "fast1", "cold1"]
    assert order == ["fast1", *one_round, *one_round]  # an untimed start, then two rounds
    out = json.loads(capsys.readouterr().out)
    assert [r["first_completion_s"] for r in out["variants"]["tp=1 fast"]["runs"]] == [4.0, 8.0]


def test_profiles_and_compile_modes_are_axes_and_background_waits_for_the_switch(
    monkeypatch, capsys, tmp_path
):
    order: list[str] = []
    calls = _fake_runs(monkeypatch, tmp_path, order)
    args = _args(["--profiles", "fast-startup,latency", "--runs", "1", "--switch-timeout", "7"])
    args.json = True
    cli = _cli(modes={"fast-startup": "off", "latency": "background"})

    assert startup.bench_startup(args, cli) == 0
    out = json.loads(capsys.readouterr().out)
    fast, latency = out["variants"]["tp=1 fast-startup fast"], out["variants"]["tp=1 latency fast"]
    assert (fast["compile_mode"], latency["compile_mode"]) == ("off", "background")
    assert fast["switch_s"] is None and latency["switch_s"] is not None
    assert latency["decode_tok_s"] == 100.0 and latency["decode_tok_s_after"] == 200.0
    # two untimed starts (one per profile, no decode), then one timed round
    assert [c["decode"] for c in calls] == [0, 0, 64, 64]
    assert [c["switch"] for c in calls] == [None, 7.0, None, 7.0]
    assert ["--profile", "latency"] == calls[1]["extra"][-2:]
    assert out["ratios"] == {"tp=1 latency / tp=1 fast-startup": round(4 / 3, 2)}


def test_a_compile_axis_sets_compile_mode_after_the_users_own_set():
    variants = build_variants([1], None, ["off", "background"], compare=False, cold=False)
    assert [v.name for v in variants] == ["tp=1 compile=off fast", "tp=1 compile=background fast"]
    args = variants[1].server_args(["--set", "compile.mode=default"])
    assert args == ["--set", "compile.mode=default", "--set", "compile.mode=background"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tp", "1,x"], "--tp takes positive integers"),
        (["--compile", "off,eager"], "--compile: unknown value 'eager'"),
        (["--compile", "off,off"], "--compile names a value twice"),
        (["--profiles", "latency,nope"], "unknown profile 'nope'"),
    ],
)
def test_bad_axes_fail_before_any_start(argv, message, monkeypatch, tmp_path):
    order: list[str] = []
    _fake_runs(monkeypatch, tmp_path, order)
    with pytest.raises(Exception, match=message):
        startup.bench_startup(_args(argv), _cli())
    assert order == []


def test_profiles_come_from_one_option():
    with pytest.raises(UsageError, match="without --profile"):
        startup.bench_startup(_args(["--profiles", "latency"]), _cli(profile="latency"))


def test_ratios_compare_each_axis_against_its_first_value_and_compile_against_off():
    variants = build_variants([1, 3], None, ["background", "off"], compare=True, cold=False)
    medians = {v.name: 2.0 for v in variants} | {"tp=1 compile=background fast": 3.0}
    labels = ratios({k: {"first_completion_s": t} for k, t in medians.items()}, variants)
    assert labels == {
        "tp=1 compile=background fast / floor": 1.5,
        "tp=1 compile=background sequential / fast": 0.67,
        "tp=1 compile=off fast / floor": 1.0,
        "tp=1 compile=off sequential / fast": 1.0,
        "tp=3 compile=background fast / floor": 1.0,
        "tp=3 compile=background sequential / fast": 1.0,
        "tp=3 compile=off fast / floor": 1.0,
        "tp=3 compile=off sequential / fast": 1.0,
        "tp=1 compile=background / tp=1 compile=off": 1.5,
        "tp=3 compile=background / tp=1 compile=background": 0.67,
        "tp=3 compile=background / tp=3 compile=off": 1.0,
        "tp=3 compile=off / tp=1 compile=off": 1.0,
    }


def test_paired_ratios_take_each_rounds_ratio_then_the_median():
    def runs(*times):
        return [{"first_completion_s": t} for t in times]

    variants = build_variants([1], None, None, compare=True, cold=False)
    all_runs = {
        FLOOR: runs(1.0, 2.0, 4.0),
        "tp=1 sequential": runs(3.0, 3.0, 12.0),
        "tp=1 fast": runs(1.5, 2.0, 10.0),
    }
    # per round: fast / floor 1.5, 1.0, 2.5; sequential / fast 2.0, 1.5, 1.2
    paired = paired_ratios(all_runs, variants)
    assert paired == {"tp=1 fast / floor": 1.5, "tp=1 sequential / fast": 1.5}
    medians = {FLOOR: 2.0, "tp=1 sequential": 3.0, "tp=1 fast": 2.0}
    got = ratios({k: {"first_completion_s": t} for k, t in medians.items()}, variants)
    assert got == {"tp=1 fast / floor": 1.0, "tp=1 sequential / fast": 1.5}


def test_the_table_shows_missing_figures_as_dashes(capsys):
    run = {"health_s": 1.0, "ready_s": 2.0, "first_completion_s": 3.0, "stages": {"compile": 0}}
    runs = [{**run, "decode_tok_s": 50.0, "switch_note": "no rt_compiled gauge"}]
    results = {
        "runs": 1,
        "machine": {"cpu": "Some CPU"},
        "variants": {
            FLOOR: startup.summarize([{"first_completion_s": 2.0}], None),
            "tp=1 fast": startup.summarize(runs, "background"),
        },
        "ratios": {"tp=1 fast / floor": 1.5},
    }
    startup.print_results(results)
    lines = capsys.readouterr().out.splitlines()
    assert "Some CPU" in lines[0]
    assert lines[3].split()[-8:] == ["-", "2.000", *["-"] * 6]  # the floor: a time, no more
    row = ["2", "tp=1", "fast", "background", "3.000", "1.000", "2.000", "50.0", "-", "-", "-"]
    assert lines[4].split() == row
    assert "tp=1 fast: no switch: no rt_compiled gauge" in lines[5]
    assert lines[-1].strip() == "tp=1 fast / floor: 1.5x"


def test_metrics_and_compile_seconds_are_read_from_the_server():
    text = '# HELP rt_compiled x\nrt_compiled 1.0\nrt_compile_seconds{rank="0"} 4.5\n'
    assert startup_once_up.metric(text, "rt_compiled") == 1.0
    assert startup_once_up.metric(text, "rt_compile_seconds") == 4.5
    assert startup_once_up.metric(text, "rt_compiled_not") is None
    span = {"kind": "stage", "rank": 0, "stage": "compile", "duration_s": 2.0, "outcome": "ok"}
    assert startup_once_up.compile_seconds({"spans": [span]}, text) == 4.5
    assert startup_once_up.compile_seconds({"spans": [span]}, "") == 2.0
    skipped = {**span, "outcome": "skipped"}
    assert startup_once_up.compile_seconds({"spans": [skipped]}, "") is None


def test_the_switch_is_waited_for_and_each_poll_gives_the_server_a_step(monkeypatch):
    pages = iter(["rt_compiled 0\n", "rt_compiled 0\n", "rt_compiled 1\n"])
    nudges: list[dict] = []
    monkeypatch.setattr(startup_once_up, "get", lambda port, path: (200, next(pages).encode()))
    monkeypatch.setattr(
        startup_once_up, "post", lambda port, path, body: nudges.append(body) or (200, b"")
    )
    monkeypatch.setattr(startup_once_up, "SWITCH_POLL_S", 0.0)
    proc = types.SimpleNamespace(poll=lambda: None)
    seconds, note = startup_once_up.wait_for_switch(1, proc, 0.0, 60, "m")
    assert seconds is not None and note is None
    assert len(nudges) == 2 and nudges[0]["max_tokens"] == 1  # a server switches before a step
    monkeypatch.setattr(startup_once_up, "get", lambda port, path: (200, b"rt_compiled 0\n"))
    assert startup_once_up.wait_for_switch(1, proc, 0.0, 0, "m") == (
        None,
        "rt_compiled still 0 after 0 s (--switch-timeout)",
    )
    monkeypatch.setattr(startup_once_up, "get", lambda port, path: (200, b"rt_ready 1\n"))
    assert "no rt_compiled gauge" in startup_once_up.wait_for_switch(1, proc, 0.0, 60, "m")[1]


def test_bench_startup_on_a_tiny_model(tiny_model, capsys):
    argv = ["bench", "startup", str(tiny_model), "--runs", "1", "--compile", "off"]
    assert main([*argv, "--decode-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    v = out["variants"]["tp=1 compile=off fast"]
    assert v["compile_mode"] == "off" and v["switch_s"] is None
    assert v["compile_s"] is None or v["compile_s"] < 1  # off: nothing compiles
    assert 0 < v["ready_s"] <= v["first_completion_s"]
    assert v["decode_tok_s"] > 0 and v["runs"][0]["decode_tokens"] >= 2
    assert v["runs"][0]["exit_code"] == 0
    assert out["machine"]["cpu"]
