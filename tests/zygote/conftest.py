"""Each zygote test runs its zygote in an RT_CACHE_DIR of its own and stops it after."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_rt
from tests.engine_e2e.conftest import tiny_llama  # noqa: F401  (a fixture)


def pid_alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def start_zygote(env: dict[str, str], *options: str) -> dict:
    out = run_rt("zygote", "start", *options, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return zygote_status(env)


def zygote_status(env: dict[str, str]) -> dict:
    out = run_rt("zygote", "status", "--json", env=env, timeout=60)
    return json.loads(out.stdout)


def stop_zygote(env: dict[str, str]) -> None:
    """`rt zygote stop`, then make sure: nothing a test started outlives it."""
    run_rt("zygote", "stop", env=env, timeout=60)
    record = Path(env["RT_CACHE_DIR"]) / "zygote" / "zygote.json"
    try:
        pid = json.loads(record.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def zygote_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a test's own RT_CACHE_DIR; its zygote is stopped after."""
    env = {"RT_CACHE_DIR": str(tmp_path / "cache")}
    yield env
    stop_zygote(env)


@pytest.fixture(scope="module")
def shared_zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One running zygote for the tests of a module that only use it."""
    env = {"RT_CACHE_DIR": str(tmp_path_factory.mktemp("zygote-cache"))}
    start_zygote(env)
    yield env
    stop_zygote(env)
