"""``rt bench startup --zygote``: a variant per group beside the floor and the fast path;
only it may ask the zygote, and the zygote's resident memory is reported."""

from __future__ import annotations

import json
import os

from rt.plugins.bench import startup
from rt.plugins.bench.startup_variants import FLOOR, build_variants, ratio_terms

from tests.http.test_bench_startup import _args, _cli, _fake_runs


def test_zygote_variants_come_with_the_floor_and_their_own_ratios():
    variants = build_variants([1, 3], None, None, False, False, zygote=True)
    names = [v.name for v in variants]
    assert names == [FLOOR, "tp=1 fast", "tp=1 zygote", "tp=3 fast", "tp=3 zygote"]
    assert variants[2].server_env() == {"RT_ZYGOTE__USE": "auto"}
    assert variants[1].server_env() == {"RT_ZYGOTE__USE": "off"}
    labels = [label for label, _, _ in ratio_terms(variants)]
    assert "tp=1 zygote / floor" in labels and "tp=1 zygote / fast" in labels
    assert "tp=3 zygote / tp=1 zygote" in labels and "tp=3 / tp=1" in labels


class _FakeZygote:
    def __init__(self, options: list[str]) -> None:
        self.options = options
        self.finished = False

    def finish(self) -> None:
        self.finished = True

    def summary(self) -> dict:
        return {
            "pid": 7,
            "torch": "x",
            "import_s": 2.0,
            "rss_bytes": 300 << 20,
            "rss_after_runs_bytes": 310 << 20,
            "forks": 3,
            "commands": 1,
            "started_by_bench": True,
        }


def test_bench_startup_runs_the_zygote_variant_with_the_zygote_allowed(
    monkeypatch, capsys, tmp_path
):
    order: list[str] = []
    calls = _fake_runs(monkeypatch, tmp_path, order)
    seen_env: list[str | None] = []
    fake_serve = startup.serve_once

    def serve_once(*args, **kwargs):
        seen_env.append(os.environ.get("RT_ZYGOTE__USE"))
        return fake_serve(*args, **kwargs)

    made: list[_FakeZygote] = []
    monkeypatch.setattr(startup, "serve_once", serve_once)
    monkeypatch.setattr(startup, "BenchZygote", lambda o: made.append(_FakeZygote(o)) or made[0])
    monkeypatch.delenv("RT_ZYGOTE__USE", raising=False)
    args = _args(["--zygote", "--runs", "1", "--json"])
    assert startup.bench_startup(args, _cli()) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["variants"]) == [FLOOR, "tp=1 fast", "tp=1 zygote"]
    assert seen_env == ["off", "off", "auto"]  # priming, then one round: fast, zygote
    assert "RT_ZYGOTE__USE" not in os.environ
    assert made[0].finished and out["zygote"]["rss_bytes"] == 300 << 20
    assert {"tp=1 zygote / floor", "tp=1 zygote / fast"} <= set(out["ratios"])
    assert len(calls) == 3


def test_the_summary_line_counts_the_drivers_among_the_forks():
    from rt.plugins.bench.startup_zygote import describe

    line = describe(_FakeZygote([]).summary())
    assert "resident memory 300 MiB after its start, 310 MiB after the runs" in line
    assert "forked 3 processes (1 of them commands' drivers)" in line
