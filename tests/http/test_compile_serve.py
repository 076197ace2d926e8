"""``compile.mode = "background"`` in a real server: ready at eager speed, then every
rank switches to the compiled step between two steps, and no request notices.

TP=2 so that the switch is agreed between processes. Requests run back to back from
ready until ``/metrics`` says ``rt_compiled 1``: the switch happens inside a step, so
one of them was in flight across it, and each must give the tokens of the first
(eager) one.
"""

from __future__ import annotations

import time

import httpx
import pytest

from .serve_process import rt_serve

GREEDY = {"prompt": "Hello there", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
SWITCH_TIMEOUT_S = 900  # two ranks compiling cold on two cores while serving


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _tokens(url: str) -> str:
    r = httpx.post(url + "/v1/completions", json=GREEDY, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


@pytest.mark.slow
def test_background_compile_switches_every_rank_between_steps(http_env, tiny_model, tmp_path):
    args = ("--tp", "2", "--compile", "background")
    sets = ("--set", f"compile.cache_dir={tmp_path / 'compile'}")
    with rt_serve(tiny_model, http_env, tmp_path / "serve.log", *args, *sets) as served:
        url = served.url
        assert _metric(url, "rt_compiled") == 0.0  # ready before the compiled step
        eager = _tokens(url)
        deadline = time.monotonic() + SWITCH_TIMEOUT_S
        answers = []
        while _metric(url, "rt_compiled") == 0.0:
            assert time.monotonic() < deadline, served.log_text()[-3000:]
            answers.append(_tokens(url))
        after = [_tokens(url) for _ in range(3)]
        assert all(a == eager for a in answers + after), (eager, answers, after)
        assert _metric(url, "rt_compile_seconds") > 0
        spans = httpx.get(url + "/startup", timeout=10).json()["spans"]
        ready_at = max(s["end"] for s in spans if s["stage"] == "warmup" and s["end"])
        compiled = [s for s in spans if s["stage"] == "compile" and s["plugin"] == "compile"]
        background = [s for s in compiled if s["kind"] == "task"]
        assert background and background[0]["end"] > ready_at, "compiled after ready"
        switch = [s for s in spans if s["stage"] == "compile" and s["plugin"] == "switch"]
        assert len(switch) == 1 and switch[0]["start"] >= background[0]["end"]
        assert {s["rank"] for s in compiled if s["kind"] != "task"} == {0, 1}
