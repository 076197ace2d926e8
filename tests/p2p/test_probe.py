"""The probe subprocess's protocol and the parent's reading of it, without a GPU: the
probe's own no-CUDA report, and fake probes that crash, hang or stop mid-way."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest
from rt.plugins.p2p import probe
from rt.plugins.p2p.measure import (
    PROBE_MODULE,
    ProbeError,
    ProbeRun,
    measure_access,
    parse_events,
    probe_command,
)

DEVICES = ("GPU-a", "GPU-b", "GPU-c")


def test_pairs_round_trip_through_the_command_line():
    assert probe.parse_pairs("0-1, 0-2,1-2") == [(0, 1), (0, 2), (1, 2)]
    assert probe.parse_pairs("") == []
    assert probe.format_pairs([(0, 1), (2, 3)]) == "0-1,2-3"
    for bad in ("0-0", "01", "a-b", "0-"):
        with pytest.raises(ValueError, match="two different GPU indices"):
            probe.parse_pairs(bad)
    cmd = probe_command([(0, 1), (1, 2)], 1024)
    assert cmd == [sys.executable, "-m", PROBE_MODULE, "--pairs", "0-1,1-2", "--bytes", "1024"]


def test_events_skip_what_is_not_the_protocol():
    out = 'a warning from a library\n{"event": "ready", "devices": []}\n{broken\n{"x": 1}\n'
    assert parse_events(out) == [{"event": "ready", "devices": []}]


def test_the_probe_reports_no_cuda_and_exits_2():
    """The real module in a real subprocess: on this machine there is no CUDA."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(
        probe_command([(0, 1)]), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == probe.EXIT_NO_CUDA
    events = parse_events(done.stdout)
    assert events == [
        {"event": "error", "error": "no CUDA devices: torch.cuda.is_available() is False"}
    ]


def test_bad_arguments_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", PROBE_MODULE, "--pairs", "1-1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "two different GPU indices" in done.stderr


class FakeTorchCuda:
    """Enough of torch for ``probe.run``'s loop: pair (0, 2) raises a CUDA error."""

    class cuda:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def device_count():
            return 3

        @staticmethod
        def get_device_properties(d):
            return type("P", (), {"uuid": DEVICES[d]})()


def test_run_stops_after_a_cuda_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", FakeTorchCuda)
    monkeypatch.setattr(FakeTorchCuda, "empty", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(FakeTorchCuda, "device", lambda *a: a, raising=False)

    def copy(torch, i, j, nbytes):
        if (i, j) == (0, 2):
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return None if (i, j) == (0, 1) else "values changed"

    monkeypatch.setattr(probe, "copy_round_trip", copy)
    out = io.StringIO()
    code = probe.run([(0, 1), (0, 2), (1, 2)], 1024, out)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == probe.EXIT_CUDA_ERROR
    assert events[0]["event"] == "ready" and events[0]["devices"] == list(DEVICES)
    assert [(e["i"], e["j"], e["ok"]) for e in events[1:]] == [(0, 1, True), (0, 2, False)]
    assert (
        events[2]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    )


def _ready(devices=DEVICES) -> str:
    return json.dumps({"event": "ready", "devices": list(devices), "seconds": 0.1}) + "\n"


def _pair(i, j, ok=True, error=None) -> str:
    return (
        json.dumps({"event": "pair", "i": i, "j": j, "ok": ok, "error": error, "seconds": 0.01})
        + "\n"
    )


class Scripted:
    """A fake probe runner: each call answers with the next scripted run."""

    def __init__(self, *runs: ProbeRun):
        self.runs = list(runs)
        self.commands: list[list[str]] = []

    def __call__(self, command, timeout_s):
        self.commands.append(list(command))
        return self.runs.pop(0)


def test_every_pair_in_one_probe():
    runner = Scripted(
        ProbeRun(0, _ready() + _pair(0, 1) + _pair(0, 2) + _pair(1, 2, False, "x"), "")
    )
    m = measure_access(DEVICES, runner=runner)
    assert m.probes == 1 and len(runner.commands) == 1
    assert "0-1,0-2,1-2" in runner.commands[0]
    table = m.table(DEVICES)
    assert table.blocked_pairs() == ((1, 2),) and table.reason(1, 2) == "x"


def test_a_crash_fails_that_pair_and_a_fresh_probe_tests_the_rest():
    runner = Scripted(
        ProbeRun(-11, _ready() + _pair(0, 1), "Segmentation fault"),
        ProbeRun(0, _ready() + _pair(1, 2), ""),
    )
    m = measure_access(DEVICES, runner=runner)
    assert m.probes == 2 and runner.commands[1][-3] == "1-2"
    table = m.table(DEVICES)
    assert table.blocked_pairs() == ((0, 2),)
    assert table.reason(0, 2) == (
        "the probe was killed by signal 11 while copying between these GPUs: Segmentation fault"
    )


def test_a_hang_fails_that_pair():
    runner = Scripted(
        ProbeRun(None, _ready(), ""), ProbeRun(0, _ready() + _pair(0, 2) + _pair(1, 2), "")
    )
    table = measure_access(DEVICES, runner=runner).table(DEVICES)
    assert table.blocked_pairs() == ((0, 1),) and "hung" in table.reason(0, 1)


def test_after_a_reported_cuda_error_the_next_probe_goes_on():
    runner = Scripted(
        ProbeRun(3, _ready() + _pair(0, 1, False, "RuntimeError: CUDA error"), ""),
        ProbeRun(0, _ready() + _pair(0, 2) + _pair(1, 2), ""),
    )
    m = measure_access(DEVICES, runner=runner)
    assert m.probes == 2 and m.table(DEVICES).blocked_pairs() == ((0, 1),)


def test_a_probe_that_cannot_start_is_an_error_that_says_why():
    runner = Scripted(ProbeRun(2, '{"event": "error", "error": "no CUDA devices: x"}\n', ""))
    with pytest.raises(
        ProbeError,
        match=r"exited with code 2 before testing any GPU pair: no CUDA devices: x; .*p2p.mode=off",
    ):
        measure_access(DEVICES, runner=runner)
    runner = Scripted(ProbeRun(1, "", "Traceback...\nImportError: libcuda.so.1"))
    with pytest.raises(ProbeError, match=r"ImportError: libcuda.so.1"):
        measure_access(DEVICES, runner=runner)


def test_a_probe_that_sees_other_gpus_is_an_error():
    runner = Scripted(ProbeRun(0, _ready(("GPU-x", "GPU-y", "GPU-z")), ""))
    with pytest.raises(ProbeError, match="same CUDA_VISIBLE_DEVICES"):
        measure_access(DEVICES, runner=runner)


def test_one_gpu_starts_no_probe():
    runner = Scripted()
    m = measure_access(("GPU-a",), runner=runner)
    assert m.probes == 0 and m.pairs == () and m.table(("GPU-a",)).access == ((True,),)


def test_a_real_subprocess_that_dies_mid_way(tmp_path):
    """The default runner with a stand-in probe script: output before a crash is kept."""
    script = tmp_path / "fake_probe.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, sys
            pairs = sys.argv[sys.argv.index("--pairs") + 1]
            sys.stdout.write({_ready()!r})
            if pairs.startswith("0-1"):
                sys.stdout.write({_pair(0, 1)!r})
                sys.stdout.flush()
                os.abort()
            for p in pairs.split(","):
                i, j = map(int, p.split("-"))
                sys.stdout.write('{{"event": "pair", "i": %d, "j": %d, "ok": true, "error": null, "seconds": 0}}\\n' % (i, j))
            """
        )
    )

    def command(pairs):
        return [sys.executable, str(script), "--pairs", probe.format_pairs(pairs)]

    m = measure_access(DEVICES, command=command, timeout_s=60)
    assert m.probes == 2
    assert m.table(DEVICES).blocked_pairs() == ((0, 2),)
    assert "killed by signal 6" in m.table(DEVICES).reason(0, 2)
