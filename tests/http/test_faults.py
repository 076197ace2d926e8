"""A server that stays up: idle time is harmless, and engine death is loud and final.

Every test runs ``rt serve`` as a real process with real signals (see
docs/reliability.md for what a user sees in each case).
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.http.conftest import assert_error_body
from tests.http.serve_process import (
    INTERNALS,
    Stream,
    alive,
    descendants,
    rt_serve,
    shm_segments_of,
    wait_for,
)
from tests.serving_models import write_tp3_servable_model

GREEDY = {"prompt": "Hello there", "max_tokens": 8, "temperature": 0}
LONG = {"prompt": "Hello", "max_tokens": 200, "temperature": 0}


@pytest.fixture(scope="module")
def tp3_model(tmp_path_factory: pytest.TempPathFactory):
    return write_tp3_servable_model(tmp_path_factory.mktemp("tp3-serve"), seed=3)


def _ready_status(url: str) -> int | None:
    """``GET /ready``'s status, or None once the server has exited."""
    try:
        return httpx.get(url + "/ready", timeout=5).status_code
    except httpx.TransportError:
        return None


def _complete(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, timeout=60)


@pytest.mark.parametrize("channel", ["object-list", "shm-broadcast"])
def test_idle_longer_than_the_collective_timeout_is_harmless(
    http_env, tp3_model, tmp_path, channel
):
    timeout_s = 1.5
    with rt_serve(
        tp3_model,
        http_env,
        tmp_path / "serve.log",
        f"--plugins={channel}",
        "--tp",
        "3",
        "--set",
        f"parallel.collective_timeout_s={timeout_s}",
    ) as served:
        first = _complete(served.url, GREEDY)
        assert first.status_code == 200, first.text
        time.sleep(4 * timeout_s)  # idle: each rank waits in its channel's recv
        second = _complete(served.url, GREEDY)
        assert second.status_code == 200, (second.text, served.log_text()[-3000:])
        assert second.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
        assert httpx.get(served.url + "/ready").status_code == 200
        os.kill(served.proc.pid, signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.log_text()[-3000:]


def test_killed_rank_ends_streams_with_an_error_and_the_server_exits(http_env, tp3_model, tmp_path):
    with rt_serve(tp3_model, http_env, tmp_path / "serve.log", "--tp", "3") as served:
        ranks = served.rank_pids()
        assert set(ranks) == {0, 1, 2}
        everyone = {served.proc.pid, *descendants(served.proc.pid)}
        streams = [Stream(served.url, LONG).start() for _ in range(3)]
        for stream in streams:
            assert stream.first_token.wait(30), "every stream is under way"
        killed_at = time.monotonic()
        os.kill(ranks[2], signal.SIGKILL)
        # The rank monitor's thread records the death a moment after the kill: a /ready
        # asked at once can still be answered 200, a race the test could lose.
        wait_for(lambda: _ready_status(served.url) in (503, None), timeout=5)
        code = served.proc.wait(timeout=10)
        exited_after = time.monotonic() - killed_at
        log = served.log_text()
        assert code == 3, log[-3000:]
        assert exited_after < 5, f"exited {exited_after:.1f}s after the kill"
        assert "rank 2" in log and "SIGKILL" in log, "the log says what died"
        for stream in streams:
            assert stream.done.wait(10)
            assert stream.status == 200
            errors = stream.errors()
            assert errors, stream.events[-3:]
            assert "rank 2" in errors[0]["message"] and "SIGKILL" in errors[0]["message"]
            assert stream.events[-1] == "[DONE]", stream.events[-3:]
            assert not INTERNALS.search("\n".join(stream.events))
        wait_for(lambda: not any(alive(p) for p in everyone), timeout=5)
        assert shm_segments_of(everyone) == []


@pytest.mark.parametrize("channel", ["object-list", "shm-broadcast"])
def test_a_stopped_rank_fails_the_engine_naming_that_rank(http_env, tp3_model, tmp_path, channel):
    # A rank held still (SIGSTOP, ^Z to its process group, a debugger) is found by the
    # collective timeout like a hung one; the death a client read about used to be the
    # first rank to time out ("rank 1 exited with code 1"), which did nothing wrong.
    timeout_s = 2
    args = ("--tp", "3", f"--plugins={channel}")
    args += ("--set", f"parallel.collective_timeout_s={timeout_s}")
    with rt_serve(tp3_model, http_env, tmp_path / "serve.log", *args) as served:
        ranks = served.rank_pids()
        everyone = {served.proc.pid, *descendants(served.proc.pid)}
        os.kill(ranks[2], signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            stream = Stream(served.url, {**LONG, "stream": True}).start()
            assert stream.done.wait(timeout_s + 30), "the stream ends"
            errors = stream.errors()
            assert errors, stream.events[-3:]
            held = f"rank 2 (pid {ranks[2]}) was stopped by a signal (SIGSTOP or ^Z)"
            assert held in errors[0]["message"], errors[0]["message"]
            assert stream.events[-1] == "[DONE]"
            assert served.proc.wait(timeout=30) == 3, served.log_text()[-3000:]
            assert time.monotonic() - stopped_at < timeout_s + 15
            assert held in served.log_text()
            # the stopped rank is killed with the rest (SIGKILL needs no SIGCONT)
            wait_for(lambda: not any(alive(p) for p in everyone), timeout=10)
        finally:
            for pid in everyone:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_dead_engine_kept_up_answers_503_and_says_why(http_env, tiny_model, tmp_path):
    args = ("--tp", "2", "--set", "server.exit_on_engine_death=false")
    with rt_serve(tiny_model, http_env, tmp_path / "serve.log", *args) as served:
        everyone = {served.proc.pid, *descendants(served.proc.pid)}
        os.kill(served.rank_pids()[1], signal.SIGKILL)
        wait_for(lambda: httpx.get(served.url + "/ready").status_code == 503, timeout=5)
        ready = httpx.get(served.url + "/ready").json()
        assert ready["status"] == "dead" and "rank 1" in ready["error"], ready
        metrics = httpx.get(served.url + "/metrics").text
        assert "rt_ready 0.0" in metrics
        assert "rt_engine_deaths_total 1.0" in metrics
        response = _complete(served.url, GREEDY)
        error = assert_error_body(response, 503, "engine_dead")
        assert "rank 1" in error["message"] and "SIGKILL" in error["message"]
        assert response.headers["x-request-id"]
        bodies = [response.text] + [
            httpx.get(served.url + path).text
            for path in ("/ready", "/startup", "/startup?format=html", "/v1/nothing")
        ]
        for body in bodies:
            assert not INTERNALS.search(body), body
            assert str(tiny_model) not in body, "no server file path reaches a client"
        time.sleep(1.0)
        assert served.proc.poll() is None, "it stays up for inspection"
        os.kill(served.proc.pid, signal.SIGTERM)
        assert served.proc.wait(timeout=15) == 0, served.log_text()[-3000:]
        wait_for(lambda: not any(alive(p) for p in everyone), timeout=5)
        assert shm_segments_of(everyone) == []


def test_sigterm_mid_stream_finishes_it_refuses_new_requests_and_exits_0(
    http_env, tiny_model, tmp_path
):
    args = ("--tp", "2", "--set", "server.shutdown_grace_s=20")
    with rt_serve(tiny_model, http_env, tmp_path / "serve.log", *args) as served:
        everyone = {served.proc.pid, *descendants(served.proc.pid)}
        stream = Stream(served.url, LONG).start()
        assert stream.first_token.wait(30), "the request is in flight"
        os.kill(served.proc.pid, signal.SIGTERM)
        wait_for(lambda: httpx.get(served.url + "/ready").status_code == 503, timeout=5)
        late = _complete(served.url, GREEDY)
        error = assert_error_body(late, 503, "not_ready")
        assert "shutting down" in error["message"]
        assert served.proc.wait(timeout=30) == 0, served.log_text()[-3000:]
        assert stream.done.wait(10)
        assert stream.status == 200 and stream.errors() == [], stream.events[-3:]
        assert stream.events[-1] == "[DONE]"
        wait_for(lambda: not any(alive(p) for p in everyone), timeout=5)
        assert shm_segments_of(everyone) == []
