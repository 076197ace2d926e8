"""An RT_CACHE_DIR that is read-only or full, for the tests of what rt does then.

A real filesystem where the machine allows mounts (we run as root: a tmpfs mounted
``ro``, a 1 MiB tmpfs; ``chmod`` would not stop root). Where mounts are refused (a
sandbox without CAP_SYS_ADMIN) the ``rt`` subprocess loads
``engine_e2e/faulty_fs/sitecustomize.py``, which makes Python's file calls under the
cache fail with the same EROFS/ENOSPC, so every test runs instead of skipping.
``RT_TEST_SIMULATE_FS_FAULTS=1`` forces the simulation (to test it on a machine that mounts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs

FAULTY_FS = Path(__file__).parent / "engine_e2e" / "faulty_fs"


@attrs.frozen
class FaultyCache:
    path: Path
    env: dict[str, str]
    how: str  # "tmpfs mount" or "simulated"


def _mount(where: Path, options: str) -> bool:
    if os.environ.get("RT_TEST_SIMULATE_FS_FAULTS") or not shutil.which("mount"):
        return False
    if os.geteuid() != 0:
        return False
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def faulty_cache(tmp_path: Path, fault: str) -> Iterator[FaultyCache]:
    """An empty RT_CACHE_DIR that is read-only (``ro``) or holds 1 MiB (``full``), with the
    environment for rt processes that use it; TMPDIR (the fallback) is in tmp_path."""
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir()
    tmp.mkdir()
    env = {"RT_CACHE_DIR": str(cache), "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"}
    options = "ro,size=1m,mode=755" if fault == "ro" else "size=1m,mode=755"
    if _mount(cache, options):
        try:
            yield FaultyCache(cache, env, "tmpfs mount")
        finally:
            subprocess.run(["umount", "-l", str(cache)], check=False)
        return
    path = os.pathsep.join(p for p in (str(FAULTY_FS), os.environ.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=path, RT_TEST_FS_FAULT=f"{fault}:{cache.resolve()}")
    yield FaultyCache(cache, env, "simulated")
