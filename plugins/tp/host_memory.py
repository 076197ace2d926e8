"""How much memory this node can still give a CPU rank's KV cache (no torch).

A CPU KV cache is allocated lazily: the OS backs its pages as blocks fill, so a budget
larger than the machine (or the container) starts fine and is killed by the OOM killer
under load, hours later. :func:`cpu_kv_budget` checks the budget of every rank on the
node against what is available when the cache is made: the kernel's ``MemAvailable``,
and the memory cgroup's limit less its usage where one is set (a container's limit is
often far below the host's memory).
"""

from __future__ import annotations

from pathlib import Path

from rt.core.errors import ConfigError

MIB = 1 << 20
# "auto" on a CPU: this much per rank, less where the node has less to spare.
CPU_DEFAULT_BUDGET = 512 * MIB
AUTO_SHARE = 0.5  # of the available memory, at most, for all of a node's KV caches


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 says "max" for no limit


def _cgroup_room(root: Path) -> tuple[int, str] | None:
    """(limit - usage, which file) of this process's memory cgroup, if it has a limit."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            base = root / "sys/fs/cgroup" / rel
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
            name = "memory.max"
        elif "memory" in controllers.split(","):
            base = root / "sys/fs/cgroup/memory" / rel
            limit = _read_int(base / "memory.limit_in_bytes")
            usage = _read_int(base / "memory.usage_in_bytes")
            name = "memory.limit_in_bytes"
        else:
            continue
        # v1 writes "no limit" as a huge page-aligned number
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(limit - usage, 0), f"the memory cgroup's {name}"
    return None


def available_memory(root: Path = Path("/")) -> tuple[int, str] | None:
    """(bytes this node can still give, where that figure comes from), or None."""
    found: list[tuple[int, str]] = []
    try:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    room = _cgroup_room(root)
    if room is not None:
        found.append(room)
    return min(found) if found else None


def cpu_kv_budget(
    configured: int | None, local_ranks: int, available: tuple[int, str] | None
) -> tuple[int, str]:
    """One CPU rank's KV cache budget and where it came from.

    ``configured`` (``cache.memory``) is checked: over ``available`` for all
    ``local_ranks`` is a ConfigError naming the fix. ``None`` ("auto") is
    ``CPU_DEFAULT_BUDGET``, cut to ``AUTO_SHARE`` of what is available.

    Example: ``cpu_kv_budget(None, 3, (600 * MIB, "MemAvailable"))`` is
    ``(100 * MIB, "CPU default, cut to fit 600 MiB available (MemAvailable)")``.
    """
    if configured is None:
        if available is None or CPU_DEFAULT_BUDGET * local_ranks <= AUTO_SHARE * available[0]:
            return CPU_DEFAULT_BUDGET, "CPU default"
        cut = int(AUTO_SHARE * available[0] / local_ranks) // MIB * MIB
        return cut, f"CPU default, cut to fit {available[0] // MIB} MiB available ({available[1]})"
    if available is not None and configured * local_ranks > available[0]:
        each = "" if local_ranks == 1 else f" for each of the {local_ranks} ranks on this node"
        fits = max(int(0.8 * available[0] / local_ranks) // MIB, 1)
        raise ConfigError(
            f"a KV cache of {configured // MIB} MiB{each} is more than the "
            f"{available[0] // MIB} MiB this node has available ({available[1]}): the cache "
            f"would fill until the OOM killer stops the server; lower --kv-cache-memory "
            f"(cache.memory), e.g. to {fits}MiB"
        )
    return configured, "cache.memory"
