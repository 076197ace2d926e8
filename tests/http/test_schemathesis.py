"""Generated requests against a live ``rt serve``, from the server's own ``/openapi.json``.

schemathesis turns the document into valid and invalid requests for every operation.
Whatever is sent, the server must answer within ``DEADLINE_S`` with a status the
document lists, never a 5xx, a body that matches the document, an OpenAI error body
for every 4xx, and a 4xx for every request the document calls invalid. Generation is
derandomized and keeps no database, so a CI run sends the same cases every time.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.http.serve_process import rt_serve

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# Small enough that any max_tokens the context allows generates in well under a second.
MAX_MODEL_LEN = 48
DEADLINE_S = 20.0
# Cases per operation and mode; operations without parameters stop after one.
CASES = 70
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# positive_data_acceptance is left out on purpose: a valid body may still be refused
# (an unknown model is 404, a long prompt plus max_tokens is 400).


@pytest.fixture(scope="module")
def live_server(http_env: dict[str, str], tiny_model: Path, tmp_path_factory) -> Iterator[str]:
    """``rt serve`` in its own process, on a free port; yields its base URL."""
    log = tmp_path_factory.mktemp("schemathesis") / "serve.log"
    args = ("--max-model-len", str(MAX_MODEL_LEN))
    with rt_serve(tiny_model, http_env, log, *args) as served:
        yield served.url
        assert "Traceback" not in served.log_text(), served.log_text()[-5000:]
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(timeout=30)


def _openai_error(response) -> str | None:
    """Why a 4xx body is not an OpenAI error body, or None."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"not an OpenAI error body: {body!r}"
    message = error["message"]
    if not isinstance(message, str) or not message or "\n" in message:
        return f"error.message is not one line of text: {message!r}"
    if not isinstance(error["type"], str):
        return f"error.type is not a string: {error['type']!r}"
    return None


def _each_case(operation, mode: GenerationMode, send) -> None:
    """Call ``send(case, mode)`` on up to ``CASES`` generated cases of ``operation``."""

    @settings(
        max_examples=CASES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the report keeps the case
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        send(case, mode)

    try:
        run()
    except Unsatisfiable:  # nothing to generate: no parameters, or no invalid ones
        pass


def test_generated_requests_get_documented_answers(live_server: str) -> None:
    schema = schemathesis.openapi.from_url(live_server + "/openapi.json")
    failures: dict[str, str] = {}  # one per kind of failure, with its first example
    sent = 0

    def send(case, mode: GenerationMode) -> None:
        nonlocal sent
        sent += 1
        started = time.monotonic()
        try:
            response = case.call(base_url=live_server, timeout=DEADLINE_S)
        except Exception as e:  # a timeout, a reset connection
            failures.setdefault(f"{case.operation.label}: {type(e).__name__}", repr(case.body))
            return
        elapsed = time.monotonic() - started
        checks = CHECKS + [negative_data_rejection] if mode is GenerationMode.NEGATIVE else CHECKS
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = f"{case.operation.label}: {failure.title}"
                failures.setdefault(key, str(group)[:3000])
        if 400 <= response.status_code < 500:
            why = _openai_error(response)
            if why is not None:
                failures.setdefault(f"{case.operation.label}: {response.status_code} {why}", "")
        if elapsed > DEADLINE_S:
            failures.setdefault(f"{case.operation.label}: slow", f"{elapsed:.1f}s {case.body!r}")

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _each_case(result.ok(), mode, send)
    print(f"schemathesis sent {sent} requests")
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert sent >= 100
