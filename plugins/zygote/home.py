"""The zygote's hold on its folder: the lock it keeps for its life, and its socket."""

from __future__ import annotations

import fcntl
import os
import socket

from rt.core.errors import RtError
from rt.plugins.zygote.paths import ZygotePaths, make_private_folder, socket_address


def take_lock(paths: ZygotePaths) -> int:
    """Hold the folder's lock for this process's life; an error if a zygote holds it."""
    make_private_folder(paths.folder)
    fd = os.open(paths.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RtError(
            f"another zygote runs for {paths.folder.parent}: `rt zygote stop` first"
        ) from None
    return fd


def bind(paths: ZygotePaths) -> socket.socket:
    """Listen on the socket, created 0600. With the lock held, a socket file already
    there belongs to a zygote that died: it is replaced."""
    try:
        os.unlink(paths.socket)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # created 0600, never briefly open to others
    try:
        with socket_address(paths.socket) as address:
            listener.bind(address)
    finally:
        os.umask(old)
    os.chmod(paths.socket, 0o600)
    listener.listen(64)
    return listener
