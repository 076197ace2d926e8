"""The memory a CPU node can give its KV caches: read from /proc/meminfo and the memory
cgroup (v1 and v2 layouts, written into a fake root here), and the budget checked or cut
to fit. ``rt generate`` refusing a budget larger than the machine runs in
tests/engine_e2e/test_cli_user_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from rt.core.errors import ConfigError
from rt.plugins.tp.host_memory import MIB, available_memory, cpu_kv_budget

GIB = 1 << 30


def _root(tmp_path: Path, meminfo_kib: int, cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(
        f"MemTotal:       99999999 kB\nMemAvailable:   {meminfo_kib} kB\n"
    )
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_meminfo_alone(tmp_path):
    root = _root(tmp_path, 8 * GIB // 1024, "0::/\n", {"sys/fs/cgroup/memory.max": "max\n"})
    assert available_memory(root) == (8 * GIB, "MemAvailable")


def test_a_cgroup_v2_limit_below_the_host(tmp_path):
    files = {
        "sys/fs/cgroup/app/memory.max": f"{4 * GIB}\n",
        "sys/fs/cgroup/app/memory.current": f"{1 * GIB}\n",
    }
    root = _root(tmp_path, 64 * GIB // 1024, "0::/app\n", files)
    assert available_memory(root) == (3 * GIB, "the memory cgroup's memory.max")


def test_a_cgroup_v1_limit_and_v1_no_limit(tmp_path):
    cgroup = "4:memory:/box\n1:cpu:/\n"
    files = {
        "sys/fs/cgroup/memory/box/memory.limit_in_bytes": f"{2 * GIB}\n",
        "sys/fs/cgroup/memory/box/memory.usage_in_bytes": f"{GIB // 2}\n",
    }
    root = _root(tmp_path / "a", 64 * GIB // 1024, cgroup, files)
    assert available_memory(root) == (3 * GIB // 2, "the memory cgroup's memory.limit_in_bytes")
    files["sys/fs/cgroup/memory/box/memory.limit_in_bytes"] = "9223372036854771712\n"
    root = _root(tmp_path / "b", 64 * GIB // 1024, cgroup, files)
    assert available_memory(root) == (64 * GIB, "MemAvailable")


def test_auto_is_512_mib_a_rank_cut_to_half_of_what_is_available():
    assert cpu_kv_budget(None, 3, (8 * GIB, "MemAvailable")) == (512 * MIB, "CPU default")
    assert cpu_kv_budget(None, 3, None) == (512 * MIB, "CPU default")
    budget, source = cpu_kv_budget(None, 3, (600 * MIB, "the memory cgroup's memory.max"))
    assert budget == 100 * MIB
    assert source == "CPU default, cut to fit 600 MiB available (the memory cgroup's memory.max)"


def test_a_set_budget_past_what_is_available_for_all_ranks_names_the_fix():
    assert cpu_kv_budget(GIB, 3, (4 * GIB, "MemAvailable")) == (GIB, "cache.memory")
    with pytest.raises(ConfigError) as e:
        cpu_kv_budget(2 * GIB, 3, (4 * GIB, "MemAvailable"))
    message = str(e.value)
    assert "2048 MiB for each of the 3 ranks on this node" in message
    assert "4096 MiB this node has available (MemAvailable)" in message
    assert "lower --kv-cache-memory (cache.memory), e.g. to 1092MiB" in message
