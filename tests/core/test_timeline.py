"""Timeline spans and their exports; ``rt serve --startup-only --startup-trace``."""

from __future__ import annotations

import json

import pytest
from rt.core import Stage, hookimpl, note
from rt.core.startup import run_startup
from rt.core.timeline import Timeline
from rt.core.timeline_export import to_chrome_trace, to_json, to_table

from tests.conftest import run_rt, write_distribution
from tests.core.helpers import runtime_with

FAKE_ENGINE = """
import time
from rt.core import hookimpl, note

@hookimpl
def rt_frontend():
    return "frontend"


@hookimpl
def rt_resolve_model():
    return "model"


@hookimpl
def rt_load_tokenizer():
    return "tokenizer"

@hookimpl
def rt_start_workers():
    return "workers"

@hookimpl
def rt_load_weights():
    time.sleep(0.05)
    note("bytes", 1234)
    return "weights"

@hookimpl
def rt_allocate_kv_cache():
    return "kv"
"""


def _run_two_stages():
    class P:
        @hookimpl
        def rt_preload(self):
            note("imported", "torch")
            return "ok"

        @hookimpl
        def rt_warmup(self):
            return "warm"

    stages = [
        Stage(name="preload", hook="rt_preload"),
        Stage(name="warmup", hook="rt_warmup", needs=("preload",)),
    ]
    rt = runtime_with([("p", P())], stages)
    run_startup(rt)
    return rt


def test_spans_record_stage_plugin_rank_pid_thread_and_notes():
    rt = _run_two_stages()
    spans = rt.timeline.spans()
    kinds = sorted((s.stage, s.kind) for s in spans)
    assert kinds == [
        ("preload", "hook"),
        ("preload", "stage"),
        ("warmup", "hook"),
        ("warmup", "stage"),
    ]
    hook = next(s for s in spans if s.stage == "preload" and s.kind == "hook")
    assert hook.plugin == "p" and hook.rank == 0 and hook.outcome == "ok"
    assert hook.thread == "stage:preload" and hook.notes == {"imported": "torch"}
    assert all(s.end >= s.start for s in spans)


def test_chrome_trace_is_complete_events_in_microseconds():
    rt = _run_two_stages()
    trace = to_chrome_trace(rt.timeline)
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["name"] for e in events} == {"preload", "warmup"}
    for e in events:
        assert isinstance(e["ts"], float) and isinstance(e["dur"], float) and e["dur"] >= 0
        assert {"plugin", "rank", "outcome"} <= set(e["args"])
    json.dumps(trace)  # serialisable as is
    stage = next(e for e in events if e["name"] == "warmup" and e["cat"] == "stage")
    span = next(s for s in rt.timeline.stage_spans() if s.stage == "warmup")
    assert stage["dur"] == pytest.approx((span.end - span.start) * 1e6, abs=1)


def _process_names(timeline) -> dict[int, str]:
    events = to_chrome_trace(timeline)["traceEvents"]
    return {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}


def test_chrome_trace_names_the_driver_and_rank_0_apart_when_rank_0_has_a_process():
    import os

    from rt.core.timeline import Span, Timeline

    timeline, me = Timeline(), os.getpid()
    t = timeline.origin
    timeline.add([Span("workers", "tp", 0, me, "main", t, t + 1, "ok")])
    assert _process_names(timeline) == {me: "driver (rank 0)"}
    timeline.add([Span("load-weights", "tp", 0, me + 1, "main", t + 1, t + 2, "ok")])
    timeline.add([Span("load-weights", "tp", 1, me + 2, "main", t + 1, t + 2, "ok")])
    assert _process_names(timeline) == {me: "driver", me + 1: "rank 0", me + 2: "rank 1"}


def test_json_and_table_exports():
    rt = _run_two_stages()
    data = to_json(rt.timeline)
    assert [s["stage"] for s in data["spans"] if s["kind"] == "stage"] == ["preload", "warmup"]
    table = to_table(rt.timeline)
    assert "preload" in table and "warmup" in table and "imported=torch" in table


def test_serve_startup_only_prints_timeline_and_writes_trace(site_dir, tmp_path):
    write_distribution(
        site_dir,
        "rt-fake-engine",
        "0.1",
        {"rt_fake_engine": FAKE_ENGINE},
        {"rt.plugins": {"fake-engine": "rt_fake_engine"}},
    )
    trace = tmp_path / "trace.json"
    result = run_rt(
        "serve", "--startup-only", "--plugins=fake-engine,no:tp", "--startup-trace", str(trace)
    )
    assert result.returncode == 0, result.stderr
    assert "load-weights" in result.stderr and "bytes=1234" in result.stderr
    data = json.loads(trace.read_text())
    names = {e["name"] for e in data["traceEvents"] if e["ph"] == "X"}
    assert {"frontend", "workers", "load-weights", "kv-cache", "p2p-check", "warmup"} <= names
    p2p = next(
        e for e in data["traceEvents"] if e["name"] == "p2p-check" and e.get("cat") == "stage"
    )
    assert p2p["args"]["outcome"] == "skipped"
    # The CLI's own start (launch to rt_cli_start) is the first span, from launch.
    cli = next(e for e in data["traceEvents"] if e["name"] == "cli" and e.get("cat") == "stage")
    first = min(e["ts"] for e in data["traceEvents"] if e["ph"] == "X")
    assert cli["ts"] == first and cli["dur"] > 0
    lines = result.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    assert lines[header + 2].startswith("cli "), "the table's first row is the CLI's start"


def test_serve_without_a_frontend_plugin_says_which_stage_has_no_implementation():
    result = run_rt("serve", "--startup-only", "--plugins=no:http")
    assert result.returncode == 1
    assert (
        "stage 'frontend' is required, but no selected plugin implements 'rt_frontend'"
        in result.stderr
    )


def test_a_span_keeps_an_end_its_block_set():
    timeline = Timeline()
    with timeline.span("preload", "early", kind="task") as span:
        span.end = span.start + 0.01  # the work finished before it was recorded
    assert span.duration == pytest.approx(0.01) and span.outcome == "ok"
