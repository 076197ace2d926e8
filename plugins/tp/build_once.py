"""Build a folder once, atomically, across processes (the converted default model, the
prepared weights).

``final`` is trusted only when it holds the ``.complete`` marker, written after every
other file is fsynced and before the rename into place; a build killed half way leaves
only a temp dir that the next builder removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = ".complete"


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Make ``final`` with ``build(tmp_dir)`` exactly once, atomically, across processes.

    ``final`` is trusted only when it holds the ``.complete`` marker, which is written
    after every other file is fsynced and before the rename. Temp dirs of killed
    builds are removed by the next builder (under the lock, any temp dir is stale).
    """
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        if (final / MARKER).is_file():
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a folder without a marker was not made by us: never trust it
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            files = sorted(p.name for p in tmp.iterdir())
            (tmp / MARKER).write_text(json.dumps({"files": files}))
            for name in [*files, MARKER]:
                _fsync(tmp / name)
            _fsync(tmp)
            os.rename(tmp, final)
            _fsync(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
