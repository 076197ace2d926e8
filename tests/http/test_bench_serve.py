"""``rt bench serve`` against a tiny model: every request completes, the server exits 0."""

from __future__ import annotations

import argparse
import json

from rt.plugins.bench.serve import bench_serve, register


def test_bench_serve_reports_latency_and_a_clean_exit(http_env, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", http_env.get("PYTHONPATH", ""))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["serve", str(tiny_model), "--concurrency", "4", "--max-tokens", "8", "--json"]
    )
    # What the CLI hands a handler; only the early (config) options are read.
    early = argparse.Namespace(plugins=["http"], set=[], profile=None, config=None)
    assert bench_serve(args, argparse.Namespace(early=early)) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["completed"] == 4 and figures["errors"] == 0
    assert figures["server_exit_code"] == 0
    assert figures["output_tokens"] > 0 and figures["output_tokens_per_s"] > 0
    assert 0 < figures["ttft_p50_s"] <= figures["e2e_p95_s"]
