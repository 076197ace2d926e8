"""The peer-access cache: one JSON file per ``GpuIdentity.key`` under ``$RT_CACHE_DIR/p2p/``,
written atomically, and a lock beside it so the ranks of one node measure once.

A record::

    {"version": 1, "key": "...", "devices": [...], "driver": "550.54.15",
     "topology": "...", "access": [[true, false], [false, true]],
     "failures": [[0, 1, "..."]], "measured_at": 1767000000.0, "seconds": 3.2,
     "pid": 4242}
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rt.core.p2p import P2PTable
from rt.plugins.p2p.identity import GpuIdentity

CACHE_VERSION = 1


def cache_file(folder: Path, identity: GpuIdentity) -> Path:
    return folder / f"{identity.key}.json"


def read_record(path: Path, identity: GpuIdentity) -> dict[str, Any] | None:
    """The record at ``path`` if it is whole and describes ``identity``; else None (a
    corrupt or foreign file is measured over, never trusted)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != CACHE_VERSION:
        return None
    same = (
        record.get("devices") == list(identity.uuids)
        and record.get("driver") == identity.driver
        and record.get("topology") == identity.topology
    )
    if not same or not isinstance(record.get("measured_at"), int | float):
        return None
    try:
        table_of(record, "cache")
    except (TypeError, ValueError, KeyError):
        return None
    return record


def table_of(record: dict[str, Any], source: str) -> P2PTable:
    failures = tuple((int(i), int(j), str(why)) for i, j, why in record.get("failures", ()))
    return P2PTable(tuple(record["devices"]), record["access"], source, failures)


def make_record(identity: GpuIdentity, table: P2PTable, seconds: float) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "key": identity.key,
        "devices": list(identity.uuids),
        "driver": identity.driver,
        "topology": identity.topology,
        "access": [list(row) for row in table.access],
        "failures": [list(f) for f in table.failures],
        "measured_at": time.time(),
        "seconds": seconds,
        "pid": os.getpid(),
    }


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


@contextmanager
def node_lock(path: Path, timeout_s: float, poll_s: float = 0.05) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (yields True), or yield False when it cannot
    be had within ``timeout_s`` or the folder is not writable: the caller then works
    without it, at the cost of measuring twice."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(poll_s)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
