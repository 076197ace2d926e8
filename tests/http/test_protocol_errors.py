"""What Hypercorn answers before rt sees a request (an unparsable request, headers past
16 KiB) carries an OpenAI error body too, and the server serves on."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest


def _exchange(url: str, raw: bytes) -> tuple[int, dict, bytes]:
    """Send ``raw`` on a fresh connection; the status, headers and body of the answer
    (read until the server closes the connection)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _assert_openai_error(status: int, headers: dict, body: bytes, expected: int) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


@pytest.mark.parametrize(
    ("raw", "status", "says"),
    [
        # headers still incomplete past 16 KiB (all of it read, so the close sends no RST)
        (b"GET /v1/models HTTP/1.1\r\nHost: rt\r\nX-Big: " + b"a" * 40_000, 431, "16 KiB"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "not valid HTTP/1.1"),
        (b"POST /v1/completions HTTP/1.1\r\nHost: rt\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\n{}\r\n0\r\n\r\n", 400, "chunked"),
    ],
)  # fmt: skip
def test_hypercorns_own_errors_have_an_openai_body(server, raw, status, says):
    error = _assert_openai_error(*_exchange(server, raw), status)
    assert says in error["message"]
    assert httpx.get(server + "/health").status_code == 200
