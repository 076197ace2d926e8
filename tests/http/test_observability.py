"""/metrics, /startup and what a client disconnecting mid-stream leaves behind."""

from __future__ import annotations

import os
import re
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(server: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_counters_move(server):
    before = scrape(server)
    r = httpx.post(
        server + "/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "temperature": 0}
    )
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = scrape(server)
    route = {"route": "/v1/completions", "status": "200"}
    assert value(after, "rt_http_requests_total", **route) == (
        value(before, "rt_http_requests_total", **route) + 1
    )
    for name, delta in (
        ("rt_prompt_tokens_total", usage["prompt_tokens"]),
        ("rt_generation_tokens_total", usage["completion_tokens"]),
        ("rt_time_to_first_token_seconds_count", 1),
        ("rt_e2e_request_latency_seconds_count", 1),
    ):
        assert value(after, name) == value(before, name) + delta, name
    assert value(after, "rt_ready") == 1.0
    assert value(after, "rt_num_requests_running") == 0.0
    assert value(after, "rt_kv_cache_blocks_free") > 0
    stages = {dict(k[1])["stage"] for k in after if k[0] == "rt_startup_stage_duration_seconds"}
    assert {"frontend", "workers", "load-weights", "kv-cache", "warmup"} <= stages


def _long_prompt(server: str, max_tokens: int) -> str:
    """A prompt whose greedy continuation does not stop early (a random model may
    emit EOS at any point)."""
    for prompt in ("The quick brown fox", "Paris is the capital", "Numbers: 12345", "Hello"):
        r = httpx.post(
            server + "/v1/completions",
            json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
            timeout=60,
        )
        if r.json()["choices"][0]["finish_reason"] == "length":
            return prompt
    raise AssertionError("no test prompt runs to max_tokens on this model")


def test_client_disconnecting_mid_stream_frees_its_sequence(server):
    max_tokens = 200
    prompt = _long_prompt(server, max_tokens)
    before = scrape(server)
    baseline_used = value(before, "rt_kv_cache_blocks_used")
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", server + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            got = []
            for line in r.iter_lines():
                if line.startswith("data:"):
                    got.append(line)
                if len(got) == 2:
                    break
            # the time to first token is counted when it comes, not when the request ends
            ttft = "rt_time_to_first_token_seconds_count"
            assert value(scrape(server), ttft) == value(before, ttft) + 1
    # Leaving the block closed the connection with the request still generating.
    deadline = time.monotonic() + 10
    while True:
        now = scrape(server)
        aborted = value(now, "rt_requests_finished_total", finish_reason="abort")
        freed = (
            value(now, "rt_num_requests_running") == 0
            and value(now, "rt_kv_cache_blocks_used") == baseline_used
        )
        if aborted == value(before, "rt_requests_finished_total", finish_reason="abort") + 1:
            if freed:
                break
        assert time.monotonic() < deadline, f"not freed: {now}"
        time.sleep(0.05)
    assert value(now, "rt_requests_finished_total", finish_reason="length") == value(
        before, "rt_requests_finished_total", finish_reason="length"
    ), "the request must have been cut short, not run to max_tokens"


def test_a_client_leaving_a_stream_of_several_choices_frees_them_all(server):
    prompt = _long_prompt(server, 200)
    before = scrape(server)
    aborted = value(before, "rt_requests_finished_total", finish_reason="abort")
    body = {"prompt": prompt, "max_tokens": 200, "temperature": 0.9, "stream": True, "n": 3}
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", server + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i == 6:
                    break
    deadline = time.monotonic() + 10
    while True:
        now = scrape(server)
        if (
            value(now, "rt_requests_finished_total", finish_reason="abort") == aborted + 3
            and value(now, "rt_num_requests_running") == 0
            and value(now, "rt_requests_admitted") == 0
        ):
            break
        assert time.monotonic() < deadline, f"not freed: {now}"
        time.sleep(0.05)


def test_startup_json_and_html_show_every_stage(server):
    data = httpx.get(server + "/startup").json()
    names = {s["stage"] for s in data["spans"]}
    assert {"frontend", "model", "workers", "load-weights", "warmup"} <= names
    assert data["ready"] is True
    page = httpx.get(server + "/startup", params={"format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in data["stage_state"]:
        assert f">{name}<" in page.text or f">{name} (rank" in page.text, name
    assert "<svg" in page.text
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page.text), "no external resources"
    assert 'http-equiv="refresh"' not in page.text, "a finished startup does not reload"


def test_startup_page_shows_work_started_at_cli_entry_under_its_stage():
    """preload's imports and forkserver start at CLI entry, before the preload stage
    that records them: the page still draws them, under that stage."""
    import types

    from rt.core.timeline import Span, Timeline
    from rt.plugins.http.startup_page import render

    timeline = Timeline()
    t0, pid = timeline.origin, os.getpid()
    stage = Span("preload", None, 0, pid, "main", t0 + 0.3, t0 + 0.31, "ok")
    early = Span("preload", "preload-imports", 0, pid, "t", t0 + 0.1, t0 + 1.2, "ok", "task")
    rank0 = Span("load-weights", "tp", 0, pid + 1, "main", t0 + 1.3, t0 + 1.4, "ok")
    timeline.add([stage, early, rank0])
    runtime = types.SimpleNamespace(
        timeline=timeline, failed=None, ready=threading.Event(), stage_state={}
    )
    runtime.ready.set()
    page = render(runtime)
    assert page.index(">preload<") < page.index(">preload-imports (task)<")
    assert ">load-weights (rank 0)<" in page, "rank 0's own process is named"
