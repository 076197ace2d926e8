"""``rt bench serve`` against a tiny model: every request that stays completes, clients
that leave on purpose are counted apart, and the server exits 0."""

from __future__ import annotations

import argparse
import json
import os

from rt.plugins.bench.rss import RssSample, summarize
from rt.plugins.bench.serve import bench_serve, register


def _run(argv: list[str], capsys) -> tuple[int, dict]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv, "--json"])
    # What the CLI hands a handler; only the early (config) options are read.
    early = argparse.Namespace(plugins=["http"], set=[], profile=None, config=None)
    code = bench_serve(args, argparse.Namespace(early=early))
    return code, json.loads(capsys.readouterr().out)


def test_bench_serve_reports_latency_and_a_clean_exit(http_env, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", http_env.get("PYTHONPATH", ""))
    code, figures = _run([str(tiny_model), "--concurrency", "4", "--max-tokens", "8"], capsys)
    assert code == 0
    assert figures["completed"] == 4 and figures["failed"] == 0
    assert figures["disconnected"] == 0
    assert figures["server_exit_code"] == 0
    assert figures["output_tokens"] > 0 and figures["output_tokens_per_s"] > 0
    assert 0 < figures["ttft_p50_s"] <= figures["e2e_p95_s"]
    assert figures["cpu"] and figures["command"]  # what the doc records with each figure


def test_duration_mode_with_disconnects_loses_no_request_that_stayed(
    http_env, tiny_model, capsys, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", http_env.get("PYTHONPATH", ""))
    argv = [str(tiny_model), "--concurrency", "4", "--max-tokens", "16", "--duration", "5"]
    argv += ["--stream-share", "0.5", "--disconnect-share", "0.5", "--warmup", "1"]
    code, figures = _run(argv, capsys)
    assert figures["failed"] == 0, figures["error_messages"]
    assert code == 0
    assert figures["disconnected"] > 0
    assert figures["completed"] > figures["completed_streaming"] > 0  # both kinds stayed
    n = figures["completed"] + figures["failed"] + figures["disconnected"]
    assert figures["requests"] == n
    assert figures["server_exit_code"] == 0
    assert figures["rss_samples"] >= 4 and figures["rss_change_pct"] is not None
    assert 0 < len(figures["rss_curve_mib"]) <= figures["rss_samples"]


def test_a_running_server_is_used_as_it_is(server, capsys):
    # The module's server runs in this process: its pid is ours, and nobody stops it.
    argv = ["--url", server, "--pid", str(os.getpid()), "--concurrency", "2", "--max-tokens", "4"]
    code, figures = _run(argv + ["--stream-share", "0"], capsys)
    assert code == 0 and figures["completed"] == 2 and figures["completed_streaming"] == 0
    assert figures["server_exit_code"] is None and figures["ready_s"] is None
    assert figures["rss_peak_bytes"] > 0


def test_rss_windows_follow_the_warmup_and_end_at_the_deadline():
    samples = [RssSample(float(t), 100 + (10 if t >= 80 else 0), 2) for t in range(121)]
    s = summarize(samples, warmup_s=10, end_s=120)
    assert s["rss_window_s"] == 30
    assert s["rss_first_mean_bytes"] == 100 and s["rss_last_mean_bytes"] == 110
    assert s["rss_change_pct"] == 10.0
    short = summarize(samples[:6], warmup_s=1, end_s=5)
    assert short["rss_window_s"] == 2.0  # halves of what follows the warm-up


def test_warm_up_lasts_until_every_client_finished_its_first_request():
    from rt.plugins.bench.load import Outcome, first_round_end_s

    outcomes = [
        Outcome("ok", True, start_s=0.0, e2e_s=30.0, client=0),
        Outcome("ok", True, start_s=30.0, e2e_s=5.0, client=0),
        Outcome("disconnected", False, start_s=0.1, e2e_s=0.2, client=1),
        Outcome("ok", False, start_s=0.3, e2e_s=40.0, client=1),
    ]
    assert first_round_end_s(outcomes) == 30.0
    assert first_round_end_s([]) == 0.0
