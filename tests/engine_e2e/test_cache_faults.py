"""Fault matrix, files: rt's cache read-only or full, two first starts at once, damaged weights.

Real ``rt`` processes on real files; the read-only and full caches are real filesystems
where the machine allows mounts, else simulated (tests/faulty_cache.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rt.core.build_once import is_complete

from tests.conftest import run_rt
from tests.faulty_cache import FaultyCache, faulty_cache

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
START_TIMEOUT_S = 300  # a first start converts the GGUF: ~15 s alone, more on a busy 2-core box


class Server:
    """``rt serve`` on a free port in its own process; stderr collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        full_env = {**os.environ, **env}
        full_env.pop("RT_DEBUG", None)
        cmd = [sys.executable, "-m", "rt", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url: str | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"rt serve exited with {self.proc.returncode}:\n{self.stderr[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"no {text!r} from rt serve in {timeout:.0f} s:\n{self.stderr[-3000:]}")

    def wait_ready(self) -> str:
        line = self.wait_for("rt: serving on ")
        self.url = line.split("rt: serving on ", 1)[1].split()[0]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"rt serve exited with {self.proc.returncode}:\n{self.stderr[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/ready", timeout=5, trust_env=False).status_code == 200:
                    return self.url
            time.sleep(0.2)
        pytest.fail(f"rt serve was not ready in {START_TIMEOUT_S} s:\n{self.stderr[-3000:]}")

    def complete(self, prompt: str = "The capital of France is") -> str:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0}
        r = httpx.post(self.url + "/v1/completions", json=body, timeout=120, trust_env=False)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    def conversions_here(self) -> int:
        """How many default-model conversions this server's startup timeline notes
        ("done here (12.9 s)"; the model stage and the prefetch, which both resolve the
        model, say "done earlier" when they found the folder made)."""
        spans = httpx.get(self.url + "/startup", timeout=30, trust_env=False).json()["spans"]
        notes = [s["notes"]["conversion"] for s in spans if "conversion" in s["notes"]]
        assert notes, "the model stage notes where the default model came from"
        return sum(n.startswith("done here") for n in notes)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(10)
        return code


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[Server]:
    server = Server(env, *args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _fallback_models(faulty: FaultyCache) -> Path:
    return Path(faulty.env["TMPDIR"]) / f"rt-{os.getuid()}" / "models"


def _nothing_trusted_or_left(cache: Path) -> None:
    """A failed write leaves no temp folder and no complete-looking folder in the cache."""
    assert not list(cache.rglob("*.safetensors")), sorted(cache.rglob("*"))
    assert not [p for p in cache.rglob(".*.tmp-*")], sorted(cache.rglob("*"))
    assert not [d for d in cache.rglob("*") if d.is_dir() and is_complete(d)]


def test_read_only_cache_serves_the_default_model_converted_into_the_temp_dir(tmp_path):
    with faulty_cache(tmp_path, "ro") as faulty:
        with serving(faulty.env) as server:
            assert server.complete()
            assert server.conversions_here() == 1
            server.wait_for("cannot save prepared weights", timeout=60)
        stderr = server.stderr
        models = _fallback_models(faulty)
        assert (
            f"rt: warning: cannot write the default model to {faulty.path}/models "
            f"(Read-only file system); using {models} instead"
        ) in stderr, (faulty.how, stderr[-3000:])
        assert f"cannot save prepared weights to {faulty.path}/prepared (Read-only" in stderr
        assert "make RT_CACHE_DIR writable" in stderr
        assert "Traceback" not in stderr
        assert [d for d in models.iterdir() if is_complete(d)]
        assert list(faulty.path.iterdir()) == []


def test_full_cache_serves_and_leaves_no_half_written_file(tmp_path):
    with faulty_cache(tmp_path, "full") as faulty:
        with serving(faulty.env) as server:
            assert server.complete()
            server.wait_for("cannot save prepared weights", timeout=60)
        stderr = server.stderr
        models = _fallback_models(faulty)
        assert (
            f"rt: warning: cannot write the default model to {faulty.path}/models "
            f"(No space left on device); using {models} instead"
        ) in stderr, (faulty.how, stderr[-3000:])
        assert f"cannot save prepared weights to {faulty.path}/prepared (No space" in stderr
        assert "Traceback" not in stderr
        _nothing_trusted_or_left(faulty.path)

        # The next start reuses the temp dir's copy: no second conversion, no failed one.
        again = run_rt("generate", "--max-tokens", "2", "Hello", env=faulty.env, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "conversion=done earlier" in again.stdout + again.stderr
        assert "(not writable, or too little room); using" in again.stderr
        _nothing_trusted_or_left(faulty.path)


def test_two_first_starts_on_one_cache_convert_once_and_both_serve(tmp_path):
    cache = tmp_path / "cache"
    env = {"RT_CACHE_DIR": str(cache), "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    servers = [Server(env), Server(env)]  # the same moment, the same empty cache
    try:
        for server in servers:
            server.wait_ready()
        assert all(server.complete() for server in servers)
        assert sorted(server.conversions_here() for server in servers) == [0, 1]
    finally:
        codes = [server.stop() for server in servers]
    assert "Traceback" not in servers[0].stderr + servers[1].stderr
    assert codes == [0, 0], [s.stderr[-2000:] for s in servers]
    folders = [d for d in (cache / "models").iterdir() if d.is_dir()]
    assert len(folders) == 1 and is_complete(folders[0]), folders
    assert not (tmp_path / f"rt-{os.getuid()}").exists(), "the fallback was not needed"


def _truncate(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    return f"{path} is truncated: the header says tensor "


def _corrupt_header(path: Path) -> str:
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"{garbage")
    return f"{path} has a corrupt header: the header is not JSON"


@pytest.mark.parametrize("damage", [_truncate, _corrupt_header], ids=["truncated", "corrupt"])
def test_damaged_safetensors_is_one_line_naming_the_file(tiny_llama, tmp_path, damage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    expected = damage(folder / "model.safetensors")
    result = run_rt("generate", "--max-tokens", "2", str(folder), "Hello")
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rt: error: ") and expected in last, result.stderr[-3000:]
    assert last.endswith("; re-download or re-convert it")
    assert "Traceback" not in result.stderr
