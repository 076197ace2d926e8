"""A real ``rt serve`` stack (startup graph, TP engine, HTTP server) on a free port.

Until rt's pyproject registers the ``http`` plugin as a built-in, the session
writes a throwaway distribution that declares it; once it is built in, that step
is skipped. Either way ``--plugins=http`` selects it.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from rt.core.discovery import discover
from rt.core.profile_registry import load_config
from rt.core.runtime import Runtime
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup

from tests.conftest import write_distribution
from tests.serving_models import write_servable_model


@pytest.fixture(scope="session")
def http_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for ``rt`` subprocesses; makes the plugin discoverable here too."""
    if any(p.name == "http" for p in discover().plugins):
        return dict(os.environ)
    site = write_distribution(
        tmp_path_factory.mktemp("http-site"),
        "rt-http-dev",
        "0.0",
        {},
        {"rt.plugins": {"http": "rt.plugins.http.hooks"}},
    )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_servable_model(tmp_path_factory.mktemp("tiny-serve"), "llama_gqa_tied", seed=1)


def make_runtime(
    model: Path | str,
    *settings: tuple[str, str],
    extra_plugins: tuple[tuple[str, object], ...] = (),
    exclude: tuple[str, ...] = (),
) -> Runtime:
    cli = [
        ("model.source", str(model), "test"),
        ("startup.print_timeline", "false", "test"),
        ("server.port", "0", "test"),
        ("plugins", "http", "test"),
    ]
    cli += [(k, v, "test") for k, v in settings]
    # nothing from the environment but the harness's device (tests/conftest.py)
    device = {k: v for k, v in os.environ.items() if k == "RT_PARALLEL__DEVICE"}
    config = load_config(environ=device, cli=cli)
    return create_runtime(
        config, select(discover(), config.plugins), extra_plugins=extra_plugins, exclude=exclude
    )


def base_url(runtime: Runtime) -> str:
    return f"http://127.0.0.1:{runtime.results['frontend'].port}"


@pytest.fixture(scope="module")
def server(http_env: dict[str, str], tiny_model: Path) -> Iterator[str]:
    """One started server per module; yields its base URL."""
    runtime = make_runtime(tiny_model)
    try:
        run_startup(runtime)
        yield base_url(runtime)
    finally:
        runtime.shutdown()


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    """The official client on the module's server."""
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def start_in_background(runtime: Runtime) -> threading.Thread:
    """Run startup in a thread (the frontend answers while the rest still runs)."""
    thread = threading.Thread(target=lambda: _quiet_startup(runtime), daemon=True)
    thread.start()
    return thread


def _quiet_startup(runtime: Runtime) -> None:
    try:
        run_startup(runtime)
    except Exception:
        pass  # the test looks at runtime.failed


def assert_error_body(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error
