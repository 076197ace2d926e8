"""A read-only or full filesystem under one folder, for machines that refuse mounts.

Loaded by a test's ``rt`` subprocess (this folder on its PYTHONPATH) with
``RT_TEST_FS_FAULT=ro:<dir>`` or ``full:<dir>``: Python's file calls under ``<dir>`` then
fail as the kernel would fail them, EROFS when opening for writing, creating or renaming
(``ro``), ENOSPC once 1 MiB has been written there (``full``, the tail of the write that
crosses it lands first, so a half-written file is left as a real full disk leaves it,
and ``os.statvfs`` reports no free blocks there; ``os.posix_fallocate`` of a file there,
how rt reserves a ``/dev/shm`` segment, fails with ENOSPC past 1 MiB).
Only the tests use it: rt itself never reads the variable. Writes from native code
(tokenizers' Rust ``save``) bypass it; rt's big files are written through Python.
"""

from __future__ import annotations

import builtins
import errno
import io
import os

_spec = os.environ.get("RT_TEST_FS_FAULT", "")
_MODE, _, _ROOT = _spec.partition(":")
_BUDGET = [1 << 20]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under(path: object) -> bool:
    if isinstance(path, int) or not _ROOT:
        return False
    real = os.path.realpath(os.fsdecode(path))
    return real == _ROOT or real.startswith(_ROOT.rstrip("/") + "/")


def _fail(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), os.fsdecode(path))


class _FullFile:
    """A file whose writes stop when the folder's budget is spent."""

    def __init__(self, f: io.IOBase, path: object) -> None:
        self._f, self._path = f, path

    def write(self, data) -> int:  # noqa: ANN001
        text = isinstance(data, str)
        n = len(data.encode()) if text else memoryview(data).nbytes
        if n > _BUDGET[0]:
            self._f.write(data[: _BUDGET[0]] if text else memoryview(data).cast("B")[: _BUDGET[0]])
            _BUDGET[0] = 0
            raise _fail(errno.ENOSPC, self._path)
        _BUDGET[0] -= n
        return self._f.write(data)

    def __enter__(self):  # noqa: ANN204
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._f, name)


def _install() -> None:
    real_open, real_os_open = io.open, os.open
    real_mkdir, real_rename, real_replace = os.mkdir, os.rename, os.replace

    def fake_open(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        writing = any(c in mode for c in "wax+")
        if writing and _under(file):
            if _MODE == "ro":
                raise _fail(errno.EROFS, file)
            return _FullFile(real_open(file, mode, *args, **kwargs), file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):  # noqa: ANN001, ANN202
        if _MODE == "ro" and flags & _WRITE_FLAGS and _under(path):
            raise _fail(errno.EROFS, path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):  # noqa: ANN001, ANN202
        if _MODE == "ro" and _under(path):
            raise _fail(errno.EEXIST if os.path.isdir(path) else errno.EROFS, path)
        return real_mkdir(path, *args, **kwargs)

    def fake_rename(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202
        if _MODE == "ro" and (_under(src) or _under(dst)):
            raise _fail(errno.EROFS, dst)
        return real_rename(src, dst, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202
        if _MODE == "ro" and (_under(src) or _under(dst)):
            raise _fail(errno.EROFS, dst)
        return real_replace(src, dst, *args, **kwargs)

    real_statvfs = os.statvfs

    def fake_statvfs(path):  # noqa: ANN001, ANN202
        st = real_statvfs(path)
        if _MODE != "full" or not _under(path):
            return st
        # no free blocks, as a full filesystem reports (shutil.disk_usage reads this)
        fields = (st.f_bsize, st.f_frsize, st.f_blocks, 0, 0)
        return os.statvfs_result(
            fields + (st.f_files, st.f_ffree, st.f_favail, st.f_flag, st.f_namemax)
        )

    real_fallocate = os.posix_fallocate

    def fake_fallocate(fd, offset, length):  # noqa: ANN001, ANN202
        # tmpfs (/dev/shm) allocates a segment's pages here: past the budget, ENOSPC
        path = os.readlink(f"/proc/self/fd/{fd}")
        if _MODE == "full" and _under(path) and offset + length > _BUDGET[0]:
            raise _fail(errno.ENOSPC, path)
        return real_fallocate(fd, offset, length)

    os.statvfs = fake_statvfs
    os.posix_fallocate = fake_fallocate
    io.open = builtins.open = fake_open
    os.open, os.mkdir, os.rename, os.replace = fake_os_open, fake_mkdir, fake_rename, fake_replace


if _MODE in ("ro", "full"):
    _install()
