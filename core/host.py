"""What this host offers the processes rt starts: usable CPU cores, ports and a listening
socket (no torch). The page cache has its own module, ``pagecache.py``."""

from __future__ import annotations

import os
import socket


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def listening_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: the OS picks) and already listening, so
    connections to it succeed (queued) before anyone accepts them."""
    return socket.create_server((host, port), backlog=128)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
