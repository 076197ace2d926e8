"""The server is up before the engine, tells the truth about startup, keeps the API
key, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from rt.core import hookimpl

from tests.conftest import write_distribution
from tests.http.conftest import assert_error_body, base_url, make_runtime, start_in_background
from tests.http.serve_process import alive, descendants, wait_for


class GatedWarmup:
    """A throwaway plugin: warmup does not finish until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    @hookimpl
    def rt_warmup(self) -> None:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"


def test_health_before_ready_and_api_503_until_ready(http_env, tiny_model):
    gated = GatedWarmup()
    runtime = make_runtime(tiny_model, extra_plugins=(("gated-warmup", gated),))
    thread = start_in_background(runtime)
    try:
        wait_for(lambda: "frontend" in runtime.results or runtime.failed is not None)
        url = base_url(runtime)
        assert httpx.get(url + "/health").status_code == 200
        assert gated.entered.wait(60)
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503
        assert "warmup" in ready.json()["running"]
        api = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user"}]})
        error = assert_error_body(api, 503)
        assert int(api.headers["Retry-After"]) > 0
        assert "warmup" in error["message"]
        with pytest.raises(openai.APIStatusError) as info:
            openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).models.list()
        assert info.value.status_code == 503
        page = httpx.get(url + "/startup", params={"format": "html"}).text
        assert 'http-equiv="refresh"' in page, "the page reloads itself while starting"
        assert httpx.get(url + "/startup").json()["ready"] is False

        gated.gate.set()
        wait_for(lambda: httpx.get(url + "/ready").status_code == 200)
        out = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert out.status_code == 200, out.text
    finally:
        gated.gate.set()
        thread.join(60)
        runtime.shutdown()


def test_api_key_guards_v1_only(http_env, tiny_model):
    # Only the frontend stage: the key check does not need an engine.
    runtime = make_runtime(tiny_model, ("server.api_key", "s3cret"), exclude=_all_but_frontend())
    thread = start_in_background(runtime)
    try:
        thread.join(30)
        url = base_url(runtime)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers=headers)
            assert_error_body(r, 401, "invalid_api_key")
            r = httpx.post(url + "/tokenize", json={"prompt": "x"}, headers=headers)
            assert_error_body(r, 401, "invalid_api_key")  # the tokenizer is the model's too
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = {"Authorization": "Bearer s3cret"}
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"}, headers=good)
        assert_error_body(r, 503, "no_engine")  # past the key; this runtime has no engine
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/ready").status_code == 503  # open, and honest
    finally:
        runtime.shutdown()


def _all_but_frontend() -> tuple[str, ...]:
    from rt.core.discovery import discover

    return tuple(s.name for s in discover().stages if s.name != "frontend")


@pytest.mark.parametrize("rank0", ["driver", "process"])
def test_sigterm_drains_and_exits_0_leaving_no_process(http_env, tiny_model, tmp_path, rank0):
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "rt", "serve", str(tiny_model), "--plugins=http", "--port", "0"]
    cmd += ["--tp", "2", "--set", "server.shutdown_grace_s=5", "--set", f"parallel.rank0={rank0}"]
    env = {**http_env, "OMP_NUM_THREADS": "1"}
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_for(lambda: "rt: serving on" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        url = log.read_text().split("rt: serving on ", 1)[1].split()[0]
        wait_for(lambda: httpx.get(url + "/ready").status_code == 200 or proc.poll() is not None)
        children = descendants(proc.pid)
        assert children, "TP=2 runs a worker rank in a child process"
        # A request in flight when the signal arrives still completes.
        result: dict[str, httpx.Response] = {}
        body = {"prompt": "Hello", "max_tokens": 64, "temperature": 0, "stream": True}

        def request() -> None:
            result["r"] = httpx.post(url + "/v1/completions", json=body, timeout=30)

        client = threading.Thread(target=request)
        client.start()
        time.sleep(0.2)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 5 + 10, "exited within the grace period"
        client.join(10)
        assert result["r"].status_code == 200
        assert result["r"].text.rstrip().endswith("data: [DONE]")
        assert '"error"' not in result["r"].text, "it finished within the grace period"
        wait_for(lambda: not any(alive(p) for p in children), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("rank0", ["driver", "process"])
def test_sigterm_during_startup_aborts_it_and_cleans_up(http_env, tiny_model, tmp_path, rank0):
    site = tmp_path / "site"
    write_distribution(
        site,
        "rt-slow-warmup",
        "0.1",
        {"rt_slow_warmup": SLOW_WARMUP},
        {"rt.plugins": {"slow-warmup": "rt_slow_warmup"}},
    )
    env = {**http_env, "PYTHONPATH": f"{site}{os.pathsep}{http_env.get('PYTHONPATH', '')}"}
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "rt", "serve", str(tiny_model), "--port", "0", "--tp", "2"]
    cmd += ["--plugins=http,slow-warmup", "--set", f"parallel.rank0={rank0}"]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_for(lambda: "slow warmup started" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 130, log.read_text()[-3000:]
        wait_for(lambda: not any(alive(p) for p in children), timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SLOW_WARMUP = """
import sys, time
from rt.core import hookimpl

@hookimpl
def rt_warmup():
    print("slow warmup started", file=sys.stderr, flush=True)
    time.sleep(60)
"""
