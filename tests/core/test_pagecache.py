"""read_uncached reads only the windows the page cache misses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from rt.core.pagecache import read_uncached, resident_pages

WINDOW = 64 * 1024

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mincore is read through Linux's libc"
)


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(size))
    return path


def _evict(path: Path) -> bool:
    """Drop the file's pages; False where this filesystem keeps them (tmpfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        pages = resident_pages(fd, path.stat().st_size)
    finally:
        os.close(fd)
    return pages is not None and b"\x01" not in pages


@linux_only
def test_a_cached_file_is_not_read_again(tmp_path: Path) -> None:
    path = _file(tmp_path, 5 * WINDOW + 123)  # just written: every page is cached
    read, cached = read_uncached(path, memoryview(bytearray(WINDOW)))
    assert (read, cached) == (0, path.stat().st_size)


@linux_only
def test_an_evicted_file_is_read_whole_then_found_cached(tmp_path: Path) -> None:
    path = _file(tmp_path, 5 * WINDOW + 123)
    if not _evict(path):
        pytest.skip("this filesystem keeps the file's pages (tmpfs?)")
    buffer = memoryview(bytearray(WINDOW))
    assert read_uncached(path, buffer) == (path.stat().st_size, 0)
    assert read_uncached(path, buffer) == (0, path.stat().st_size)


def test_an_empty_file_reads_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert read_uncached(path, memoryview(bytearray(WINDOW))) == (0, 0)
