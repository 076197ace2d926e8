"""Clients that send too little: a request body that never completes, headers that never
end. Each holds a connection of a real ``rt serve`` until the server lets it go
(docs/reliability.md, "Slow and stalled clients")."""

from __future__ import annotations

import json
import signal
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.http.conftest import assert_error_body
from tests.http.serve_process import alive, descendants, rt_serve, wait_for

BODY = json.dumps({"prompt": "Hello", "max_tokens": 2, "temperature": 0}).encode()
HEADERS = (
    b"POST /v1/completions HTTP/1.1\r\nHost: rt\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic()


def _response(raw: bytes) -> httpx.Response:
    """The one HTTP/1.1 response in ``raw`` (a Content-Length body, as rt sends)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


@pytest.fixture(scope="module")
def server(http_env, tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("slow-clients") / "serve.log"
    args = ("--set", "server.body_timeout_s=1.5", "--set", "server.keep_alive_timeout_s=2")
    with rt_serve(tiny_model, http_env, log, *args) as served:
        yield served


def test_a_body_that_never_completes_gets_408_and_the_connection_closes(server):
    stalled = _connect(server.url)
    stalled.sendall(HEADERS + BODY[:5])  # then nothing
    sent = time.monotonic()
    # Meanwhile the server serves everyone else.
    ok = httpx.post(server.url + "/v1/completions", content=BODY, timeout=30)
    assert ok.status_code == 200, ok.text
    raw, closed = _read_until_closed(stalled)
    response = _response(raw)
    error = assert_error_body(response, 408, "request_timeout")
    assert error["type"] == "invalid_request_error"
    assert "server.body_timeout_s" in error["message"]
    assert response.headers["connection"] == "close"
    assert 1.4 < closed - sent < 10, closed - sent


def test_a_slow_body_that_arrives_in_time_is_served(server):
    sock = _connect(server.url)
    sock.sendall(HEADERS)
    for i in range(0, len(BODY), 16):  # the whole body over ~0.6 s, under the 1.5 s limit
        sock.sendall(BODY[i : i + 16])
        time.sleep(0.6 / (len(BODY) / 16))
    sock.shutdown(socket.SHUT_WR)  # one request: the server may close after answering
    response = _response(_read_until_closed(sock)[0])
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 2


def test_a_client_gone_mid_body_is_not_an_error(server):
    # A client that times out or is cancelled during its upload: nothing to answer,
    # nothing to log as a failure.
    sock = _connect(server.url)
    sock.sendall(HEADERS + BODY[:5])
    time.sleep(0.3)  # the handler is reading the body
    sock.close()
    time.sleep(0.5)
    ok = httpx.post(server.url + "/v1/completions", content=BODY, timeout=30)
    assert ok.status_code == 200, ok.text
    log = server.log_text()
    assert "Traceback" not in log and "failed" not in log, log[-3000:]
    metrics = httpx.get(server.url + "/metrics").text  # counted as nginx would: 499
    assert 'rt_http_requests_total{route="/v1/completions",status="499"} 1.0' in metrics


def test_headers_that_never_end_are_dropped(server):
    # server.keep_alive_timeout_s (2 s here; Hypercorn's keep_alive_timeout) covers a
    # connection with no complete request.
    sock = _connect(server.url)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: rt\r\n")
    sent = time.monotonic()
    raw, closed = _read_until_closed(sock)
    assert raw == b""
    assert closed - sent < 15


def test_sigterm_answers_a_request_waiting_for_its_body_and_exits_at_once(
    http_env, tiny_model, tmp_path
):
    # The body timeout is far past the grace period: only the shutdown can end the wait.
    args = ("--set", "server.body_timeout_s=600", "--set", "server.shutdown_grace_s=20")
    with rt_serve(tiny_model, http_env, tmp_path / "serve.log", *args) as served:
        children = descendants(served.proc.pid)
        stalled = _connect(served.url)
        stalled.sendall(HEADERS + BODY[:5])
        time.sleep(0.3)  # the handler is waiting for the rest
        signalled = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        response = _response(_read_until_closed(stalled)[0])
        error = assert_error_body(response, 503, "not_ready")
        assert error["message"] == "the server is shutting down"
        assert served.proc.wait(timeout=20) == 0
        # Nothing else was in flight: no grace period, no Hypercorn graceful timeout.
        assert time.monotonic() - signalled < 8
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=10)
        log = served.log_text()
        assert "Traceback" not in log, log[-3000:]
