"""Build a folder once, atomically, across processes (the converted default model, the
prepared weights).

``final`` is trusted only when it holds the ``.complete`` marker, written after every
other file is fsynced and before the rename into place; a build killed half way (or
stopped by a full disk) leaves only a temp dir that the next builder removes. The marker
lists each file's size, so a file truncated later (a copied cache, a disk error) makes the
folder incomplete again instead of being mapped.
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
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # no marker, or files that changed since: never trust it
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            files = sorted(p.name for p in tmp.iterdir())
            for name in files:
                _fsync(tmp / name)
            sizes = {name: (tmp / name).stat().st_size for name in files}
            (tmp / MARKER).write_text(json.dumps({"files": files, "sizes": sizes}))
            _fsync(tmp / MARKER)
            _fsync(tmp)
            os.rename(tmp, final)
            _fsync(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def is_complete(folder: Path) -> bool:
    """``folder`` was finished by :func:`build_once` and its files still have the sizes
    they were built with (one ``stat`` a file: this runs on every start)."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        # markers written before sizes were recorded list only the names
        sizes = marker.get("sizes") or {name: None for name in marker["files"]}
        return all(
            (folder / name).stat().st_size == size
            if size is not None
            else (folder / name).is_file()
            for name, size in sizes.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


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
