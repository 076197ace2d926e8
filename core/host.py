"""What this host offers the processes rt starts: its CPU and usable cores, ports and a
listening socket (no torch). The page cache has its own module, ``pagecache.py``."""

from __future__ import annotations

import functools
import os
import socket


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9R14", "Intel(R) Xeon(R) Processor"), else the
    architecture: what benchmarks are reported against and per-machine choices keyed by."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


@functools.cache
def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16). Without it
    (AVX2 only) a bfloat16 GEMM is emulated and runs several times slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def listening_socket(host: str, port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: the OS picks) and already listening, so
    connections to it succeed (queued) before anyone accepts them."""
    return socket.create_server((host, port), backlog=128)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def proc_bytes(path: str, field: str) -> int:
    """A ``kB`` field of a ``/proc`` file in bytes (``proc_bytes("/proc/self/status",
    "VmRSS")``, ``proc_bytes("/proc/meminfo", "MemAvailable")``); 0 when the file or the
    field is missing (a process that ended holds nothing)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
