"""One rank's peer-access table for a ``p2p.mode``: measured, or read from the cache.

* ``check``: measure at every start. The ranks of a node take turns on the cache's lock;
  the first measures, and the others take its table when it was measured after they
  were launched (``fresh_since``): one start, one measurement per node.
* ``cached`` (and ``table`` when no hardware-table plugin answered): measure once per
  cache key (GPU UUIDs, driver, topology), then read it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from rt.core.p2p import P2PTable
from rt.plugins.p2p.cache import (
    cache_file,
    make_record,
    node_lock,
    read_record,
    table_of,
    write_record,
)
from rt.plugins.p2p.identity import GpuIdentity
from rt.plugins.p2p.measure import PROBE_TIMEOUT_S, Measurement, measure_access

# Another rank of this node may be measuring: wait for it at most this long (a few
# probe processes' worth) before measuring alongside it.
LOCK_TIMEOUT_S = 4 * PROBE_TIMEOUT_S

Measure = Callable[[Sequence[str]], Measurement]


@attrs.frozen
class Checked:
    """The table and how this call got it (for the timeline)."""

    table: P2PTable
    cache: str  # "hit", "fresh" (another rank measured it this start), "miss", "unwritable"
    path: Path
    seconds: float | None = None  # measuring time, where this call measured
    probes: int = 0


def check_access(
    identity: GpuIdentity,
    mode: str,
    folder: Path,
    fresh_since: float,
    measure: Measure | None = None,
) -> Checked:
    """The table for ``mode`` (``check``, ``cached`` or ``table``); see the module doc.
    ``measure`` defaults to :func:`measure_access` (the probe subprocess)."""
    path = cache_file(folder, identity)
    lock = path.with_suffix(".lock")
    with node_lock(lock, LOCK_TIMEOUT_S) as locked:
        record = read_record(path, identity)
        if record is not None:
            if mode != "check":
                return Checked(table_of(record, "cache"), "hit", path)
            if record["measured_at"] >= fresh_since:
                return Checked(table_of(record, "measured"), "fresh", path)
        m = (measure or measure_access)(identity.uuids)
        table = m.table(identity.uuids, "measured")
        state = "miss"
        try:
            write_record(path, make_record(identity, table, m.seconds))
        except OSError:
            state = "unwritable"
        if not locked and state == "miss":
            state = "miss (unlocked)"
        return Checked(table, state, path, m.seconds, m.probes)
