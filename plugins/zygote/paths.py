"""Where a zygote lives: one folder per user and ``RT_CACHE_DIR``, closed to others.

``$RT_CACHE_DIR/zygote/`` (mode 0700) holds the socket (0600), the zygote's record
(``zygote.json``: pid, start time, for ``rt zygote stop`` when the socket is gone) and
its log. A folder another user owns, or one others may enter, is refused: whoever can
reach the socket can have processes forked as this user.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from rt.core.errors import ConfigError
from rt.core.paths import rt_cache_dir

# sun_path holds 108 bytes with the terminating NUL
MAX_SOCKET_PATH = 107


class ZygotePaths(NamedTuple):
    """The zygote's folder and the files in it (a named tuple: see wire.py)."""

    folder: Path

    @property
    def socket(self) -> Path:
        return self.folder / "socket"

    @property
    def record(self) -> Path:
        return self.folder / "zygote.json"

    @property
    def log(self) -> Path:
        return self.folder / "zygote.log"


def zygote_paths(cache_dir: Path | None = None) -> ZygotePaths:
    """The zygote's folder under ``cache_dir`` (default: ``rt_cache_dir()``)."""
    return ZygotePaths((cache_dir if cache_dir is not None else rt_cache_dir()) / "zygote")


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` may not hold a zygote's socket, or None when it may."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return f"{folder} does not exist"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a folder"
    if st.st_uid != os.geteuid():
        return (
            f"{folder} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
            "set RT_CACHE_DIR to a folder of your own"
        )
    if st.st_mode & 0o077:
        return f"{folder} is open to other users (mode {st.st_mode & 0o777:o}): chmod 700 {folder}"
    return None


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` with mode 0700; an existing one must pass :func:`folder_problem`."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:  # a read-only or full RT_CACHE_DIR, a path through a file
        raise ConfigError(
            f"cannot make the zygote's folder {folder}: {e.strerror}; point RT_CACHE_DIR "
            "at a folder you can write to"
        ) from None
    problem = folder_problem(folder)
    if problem is not None:
        raise ConfigError(f"the zygote's folder: {problem}")


@contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address to bind or connect ``path`` with: the path itself, or, past sun_path's
    107 bytes (a deep RT_CACHE_DIR), the same file reached through ``/proc/self/fd/N``
    of its folder (Linux resolves that link to the folder)."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
