"""The p2p plugin's cache: its key, the driver version, and the ``check`` / ``cached``
modes with the measurement injected (no GPU needed)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from rt.plugins.p2p import check as check_module
from rt.plugins.p2p.check import check_access
from rt.plugins.p2p.identity import GpuIdentity, driver_version, parse_driver_version, topology
from rt.plugins.p2p.measure import Measurement, PairResult

# /proc/driver/nvidia/version, as the proprietary and the open kernel modules write it.
PROPRIETARY = """\
NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.129.03  Thu Oct 19 18:56:32 UTC 2023
GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)
"""
OPEN = """\
NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:15:33 UTC 2024
GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)
"""
ARM = "NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  560.35.03  Release Build\n"

IDENTITY = GpuIdentity(("GPU-a", "GPU-b", "GPU-c"), "550.54.15", "GPU0 X NV18\nGPU1 NV18 X")


def test_driver_version_is_parsed_from_the_proc_file():
    assert parse_driver_version(PROPRIETARY) == "535.129.03"
    assert parse_driver_version(OPEN) == "550.54.15"
    assert parse_driver_version(ARM) == "560.35.03"
    assert parse_driver_version("GCC version:  gcc version 12.2.0\n") is None
    assert parse_driver_version("") is None


def test_driver_version_reads_the_file_first(tmp_path):
    path = tmp_path / "version"
    path.write_text(OPEN)
    assert driver_version(path) == "550.54.15"


def test_driver_version_without_a_driver_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML bindings
    assert driver_version(tmp_path / "missing") == "unknown"


def test_the_key_changes_with_uuids_driver_and_topology():
    base = IDENTITY.key
    assert len(base) == 16
    assert base == GpuIdentity(list(IDENTITY.uuids), IDENTITY.driver, IDENTITY.topology).key
    changed = [
        GpuIdentity(("GPU-a", "GPU-b", "GPU-d"), IDENTITY.driver, IDENTITY.topology),
        GpuIdentity(("GPU-b", "GPU-a", "GPU-c"), IDENTITY.driver, IDENTITY.topology),  # order
        GpuIdentity(IDENTITY.uuids, "555.42.02", IDENTITY.topology),  # a driver upgrade
        GpuIdentity(IDENTITY.uuids, IDENTITY.driver, "GPU0 X PIX\nGPU1 PIX X"),  # re-cabled
    ]
    keys = {c.key for c in changed}
    assert base not in keys and len(keys) == len(changed)


class FakeProps:
    def __init__(self, bus):
        self.pci_bus_id, self.pci_domain_id, self.pci_device_id = bus, 0, 0


class FakeCuda:
    @staticmethod
    def get_device_properties(d):
        return FakeProps(0x18 + d)


class FakeTorch:
    cuda = FakeCuda


def test_topology_falls_back_to_pci_addresses(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert topology(FakeTorch, 2) == "pci 0000:18:00,0000:19:00"


class Counting:
    """A measurement that a test can count, with pair (0, 2) failing."""

    def __init__(self, delay: float = 0.0):
        self.calls = 0
        self.delay = delay

    def __call__(self, devices):
        self.calls += 1
        time.sleep(self.delay)
        pairs = (
            PairResult(0, 1, True, None, 0.001),
            PairResult(0, 2, False, "values changed", 0.001),
            PairResult(1, 2, True, None, 0.001),
        )
        return Measurement(tuple(devices), pairs, 0.5, 1)


def test_cached_measures_once_per_key(tmp_path):
    measure = Counting()
    first = check_access(IDENTITY, "cached", tmp_path, time.time(), measure)
    assert first.cache == "miss" and first.table.source == "measured" and measure.calls == 1
    assert first.table.blocked_pairs() == ((0, 2),)
    again = check_access(IDENTITY, "cached", tmp_path, time.time(), measure)
    assert again.cache == "hit" and again.table.source == "cache" and measure.calls == 1
    assert again.table.access == first.table.access
    assert again.table.reason(0, 2) == "values changed"
    upgraded = GpuIdentity(IDENTITY.uuids, "555.42.02", IDENTITY.topology)
    assert check_access(upgraded, "cached", tmp_path, time.time(), measure).cache == "miss"
    assert measure.calls == 2
    assert {p.name for p in tmp_path.glob("*.json")} == {
        f"{IDENTITY.key}.json",
        f"{upgraded.key}.json",
    }


def test_table_mode_without_a_table_plugin_is_cached(tmp_path):
    measure = Counting()
    check_access(IDENTITY, "table", tmp_path, time.time(), measure)
    assert check_access(IDENTITY, "table", tmp_path, time.time(), measure).cache == "hit"
    assert measure.calls == 1


def test_check_measures_at_every_start(tmp_path):
    measure = Counting()
    check_access(IDENTITY, "check", tmp_path, time.time(), measure)
    later_start = time.time() + 0.01
    got = check_access(IDENTITY, "check", tmp_path, later_start, measure)
    assert got.cache == "miss" and got.table.source == "measured" and measure.calls == 2


def test_check_shares_one_measurement_between_the_ranks_of_a_start(tmp_path):
    """Ranks launched before the measurement take it; the lock makes them wait for it."""
    measure = Counting(delay=0.3)
    launched = time.time()
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                check_access(IDENTITY, "check", tmp_path, launched, measure)
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert measure.calls == 1
    assert sorted(r.cache for r in results) == ["fresh", "fresh", "miss"]
    assert all(r.table.source == "measured" for r in results)


def test_the_cache_file_is_whole_json_and_names_its_inputs(tmp_path):
    check_access(IDENTITY, "cached", tmp_path, time.time(), Counting())
    record = json.loads((tmp_path / f"{IDENTITY.key}.json").read_text())
    assert record["devices"] == list(IDENTITY.uuids) and record["driver"] == "550.54.15"
    assert record["topology"] == IDENTITY.topology and record["failures"] == [
        [0, 2, "values changed"]
    ]
    assert not list(tmp_path.glob("*.tmp")), "written through a temporary file, then renamed"


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 1}', '{"version": 99, "devices": []}', "[]"]
)
def test_a_corrupt_or_foreign_cache_file_is_measured_over(tmp_path, content):
    (tmp_path / f"{IDENTITY.key}.json").write_text(content)
    measure = Counting()
    assert check_access(IDENTITY, "cached", tmp_path, time.time(), measure).cache == "miss"
    assert measure.calls == 1


def test_an_unwritable_cache_still_gives_a_table(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    got = check_access(IDENTITY, "cached", Path(blocker) / "p2p", time.time(), Counting())
    assert got.cache == "unwritable" and got.table.blocked_pairs() == ((0, 2),)


def test_the_default_measurement_can_be_monkeypatched(tmp_path, monkeypatch):
    measure = Counting()
    monkeypatch.setattr(check_module, "measure_access", measure)
    check_access(IDENTITY, "check", tmp_path, time.time())
    assert measure.calls == 1
