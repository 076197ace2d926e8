"""``rt serve`` and ``rt generate`` handed to the zygote, which forks their driver: signals
reach the driver, the caller's death stops it and its ranks, exit codes and errors come
back, a config that turns the zygote off runs the command in the caller, the driver
and its rank run on the caller's CPUs, and a caller's ignored SIGHUP (``nohup``) is the
driver's too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_rt
from tests.http.serve_process import alive, descendants, rt_serve, wait_for
from tests.zygote.conftest import zygote_status

pytestmark = pytest.mark.slow


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _drivers(zygote: int) -> set[int]:
    return {p for p in descendants(zygote) if _comm(p) == "rt serve"}


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 0)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_to_the_caller_stops_the_driver_it_stands_in_for(
    shared_zygote, tiny_llama, tmp_path, signum, code
):
    zygote = zygote_status(shared_zygote)["pid"]
    env = {**os.environ, **shared_zygote}
    log = tmp_path / "serve.log"
    with rt_serve(tiny_llama, env, log, "--profile", "fast-startup") as served:
        [driver] = _drivers(zygote)
        ranks = descendants(zygote) - descendants(driver) - {driver}
        rank0 = served.rank_pids()[0]
        assert rank0 in ranks and rank0 not in descendants(served.proc.pid)
        served.proc.send_signal(signum)
        assert served.proc.wait(timeout=60) == code, served.log_text()[-3000:]
    wait_for(lambda: not alive(driver) and not alive(rank0), timeout=30)
    assert "rt: serving on" in log.read_text()  # the driver wrote to the caller's stderr


def test_the_callers_death_stops_its_driver_and_ranks(shared_zygote, tiny_llama, tmp_path):
    zygote = zygote_status(shared_zygote)["pid"]
    env = {**os.environ, **shared_zygote}
    with rt_serve(
        tiny_llama, env, tmp_path / "serve.log", "--profile", "fast-startup", "--tp", "2"
    ):
        [driver] = _drivers(zygote)
        before = descendants(zygote)
        served_pids = {p for p in before if p != driver and _comm(p) != "rt-zygote-nanny"}
        assert len(served_pids) >= 2  # rank 0 and rank 1
        os.kill(driver, 0)
    # rt_serve killed the caller (SIGKILL) on the way out: its pipe hung up
    wait_for(lambda: not alive(driver), timeout=30)
    wait_for(lambda: not any(alive(p) for p in served_pids), timeout=30)
    wait_for(lambda: not any(alive(p) for p in descendants(zygote)), timeout=30)


def test_exit_codes_and_errors_come_back_as_from_the_caller(shared_zygote, tmp_path):
    missing = str(tmp_path / "no-such-model")
    commands = zygote_status(shared_zygote)["commands"]
    here = run_rt("generate", missing, "Hi", "--no-zygote", env=shared_zygote)
    there = run_rt("generate", missing, "Hi", env=shared_zygote)
    assert zygote_status(shared_zygote)["commands"] == commands + 1
    assert there.returncode == here.returncode != 0
    assert there.stderr.strip().splitlines()[-1] == here.stderr.strip().splitlines()[-1]
    assert "no-such-model" in there.stderr


@pytest.mark.parametrize(
    "setting, reason",
    [
        (("--set", "zygote.use=off"), "zygote.use = off"),
        (("--plugins", "no:zygote"), None),
    ],
    ids=["zygote.use-off", "plugin-blocked"],
)
def test_a_config_that_turns_the_zygote_off_runs_the_command_in_the_caller(
    shared_zygote, tiny_llama, tmp_path, setting, reason
):
    before = zygote_status(shared_zygote)
    trace = tmp_path / "trace.json"
    out = run_rt(
        "generate", str(tiny_llama), "Hello", "--max-tokens", "3", "--json",
        "--profile", "fast-startup", "--startup-trace", str(trace), *setting,
        env=shared_zygote, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(json.loads(out.stdout)["token_ids"]) == 3
    spans = [
        e["args"]
        for e in json.loads(trace.read_text())["traceEvents"]
        if e.get("ph") == "X" and e["name"] == "preload" and e["args"].get("plugin") == "zygote"
    ]
    after = zygote_status(shared_zygote)
    # A driver was forked, read the config, declined; nothing else came from the zygote.
    assert after["commands"] == before["commands"] + 1
    assert after["forks"] == before["forks"] + 1
    if reason is None:
        assert spans == []  # the plugin did not run at all
    else:
        [span] = spans
        assert span["outcome"] == "skipped" and reason in span["reason"]
        assert "driver" not in span["notes"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to leave the caller 1")
def test_the_driver_and_its_rank_run_on_the_callers_cpus(shared_zygote, tiny_llama, tmp_path):
    # As `taskset -c N rt generate ...`: the zygote runs on every CPU, the caller on one.
    one = min(os.sched_getaffinity(0))
    trace = tmp_path / "trace.json"
    out = subprocess.run(
        [sys.executable, "-m", "rt", "generate", str(tiny_llama), "Hello", "--max-tokens", "2",
         "--json", "--profile", "fast-startup", "--startup-trace", str(trace)],
        capture_output=True, text=True, env={**os.environ, **shared_zygote}, timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, [one]),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    [zygote] = [e for e in events if e["name"] == "preload" and e["args"]["plugin"] == "zygote"]
    assert "forked from zygote" in zygote["args"]["notes"]["driver"]
    [weights] = [e for e in events if e["name"] == "load-weights" and e["cat"] == "hook"]
    # the rank sized its threads by the caller's one CPU, not the zygote's
    assert "one thread" in weights["args"]["notes"]["layout"], weights["args"]["notes"]


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "no-zygote"])
def test_nohup_keeps_serving_after_a_hangup(shared_zygote, tiny_llama, tmp_path, zygote):
    # `nohup rt serve &`: the caller ignores SIGHUP, so the terminal's hang-up passes it
    # by, and with a zygote its driver too.
    env = {**os.environ, **shared_zygote}
    args = ["--profile", "fast-startup"] + ([] if zygote else ["--no-zygote"])
    ignore_hup = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)  # noqa: E731
    with rt_serve(tiny_llama, env, tmp_path / "serve.log", *args, preexec_fn=ignore_hup) as s:
        drivers = _drivers(zygote_status(shared_zygote)["pid"])
        assert len(drivers) == (1 if zygote else 0)
        served = [s.proc.pid, *drivers, *s.rank_pids().values()]
        s.proc.send_signal(signal.SIGHUP)
        for pid in drivers:
            os.kill(pid, signal.SIGHUP)  # as a session's hang-up reaches every process
        time.sleep(1.0)
        assert [alive(pid) for pid in served] == [True] * len(served), s.log_text()[-3000:]
        assert httpx.get(s.url + "/health").status_code == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=60) == 0, s.log_text()[-3000:]
