"""A real zygote: start, status, stop; what its children take from their caller; the
caller's death, the zygote's crash and a lost socket; staleness and its replacement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_rt, write_distribution
from tests.zygote.conftest import pid_alive, start_zygote, wait_gone, zygote_status

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _probe(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.zygote.caller_probe", *args],
        cwd=cwd or REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_start_status_stop_round_trip(zygote_env):
    status = start_zygote(zygote_env)
    folder = Path(zygote_env["RT_CACHE_DIR"]) / "zygote"
    assert status["running"] and status["stale"] is None
    assert status["threads"] == 1 and status["cuda_initialized"] is False
    assert status["torch"] and status["rss_bytes"] > 50 << 20
    assert "tp" in status["plugins"] and "zygote" in status["plugins"]
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "socket").stat().st_mode & 0o777 == 0o600
    again = run_rt("zygote", "start", env=zygote_env)
    assert again.returncode == 0 and "already running" in again.stdout
    assert zygote_status(zygote_env)["pid"] == status["pid"]

    stopped = run_rt("zygote", "stop", env=zygote_env)
    assert stopped.returncode == 0 and f"stopped zygote pid {status['pid']}" in stopped.stdout
    assert wait_gone(status["pid"])
    assert not (folder / "socket").exists() and not (folder / "zygote.json").exists()
    gone = run_rt("zygote", "status", env=zygote_env)
    assert gone.returncode == 1 and "no zygote runs" in gone.stdout


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    # RT_CACHE_DIR under a file (as under a read-only mount) cannot hold the folder.
    (tmp_path / "a-file").write_text("")
    env = {"RT_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    result = run_rt("zygote", "start", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"rt: error: cannot make the zygote's folder {tmp_path}/a-file/cache/zygote: "
        "Not a directory; point RT_CACHE_DIR at a folder you can write to"
    ]


def test_two_starts_at_once_leave_one_zygote_and_both_succeed(zygote_env):
    command = [sys.executable, "-m", "rt", "zygote", "start"]
    env = {**os.environ, **zygote_env}
    starts = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in starts]
    assert [p.returncode for p in starts] == [0, 0], outs
    pid = zygote_status(zygote_env)["pid"]
    assert sum("already running: zygote pid" in out for out, _ in outs) == 1, outs
    assert all(f"zygote pid {pid}," in out for out, _ in outs), outs


def test_a_child_takes_its_callers_directory_environment_limits_cpus_nice_and_streams(
    zygote_env, tmp_path
):
    status = start_zygote(zygote_env)
    work = tmp_path / "work"
    work.mkdir()
    facts = tmp_path / "facts.json"
    probe = _probe(
        {**zygote_env, "RT_TEST_MARK": "from-the-caller"}, "report", str(facts), cwd=work
    )
    out, err = probe.communicate(timeout=120)
    assert probe.returncode == 0, err
    said = json.loads(out.strip().splitlines()[-1])
    child = json.loads(facts.read_text())
    assert said["exitcode"] == 0 and said["child"] == child["pid"]
    assert child["cwd"] == str(work) and child["mark"] == "from-the-caller"
    assert child["nofile"] == 123 and child["umask"] == 0o027
    # the zygote runs on every CPU at nice 0; the child takes the caller's one CPU and +3
    assert child["affinity"] == said["affinity"] and len(said["affinity"]) == 1
    assert child["nice"] == said["nice"] and said["nice"] >= 3
    assert "hello from the child" in out  # its stdout is the caller's
    assert zygote_status(zygote_env)["forks"] == 1 and pid_alive(status["pid"])


def test_exit_codes_and_signals_are_reported_as_for_any_process(zygote_env):
    start_zygote(zygote_env)
    probe = _probe(zygote_env, "exits")
    out, err = probe.communicate(timeout=120)
    assert probe.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"codes": [7, -signal.SIGTERM]}


def test_the_callers_death_kills_the_child(zygote_env):
    status = start_zygote(zygote_env)
    probe = _probe(zygote_env, "sleep")
    line = probe.stdout.readline()
    child = json.loads(line)["child"]
    assert pid_alive(child)
    probe.kill()  # SIGKILL: no cleanup in the caller at all
    probe.wait()
    assert wait_gone(child, timeout=5), "the child outlived its caller"
    assert pid_alive(status["pid"])  # the zygote is not the caller: it stays
    deadline = time.monotonic() + 5
    while _children(status["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children(status["pid"]) == []  # the nanny is reaped too


def test_a_zygote_crash_between_requests_falls_back_and_start_replaces_it(zygote_env):
    status = start_zygote(zygote_env)
    probe = _probe(zygote_env, "crash")
    out, err = probe.communicate(timeout=180)
    assert probe.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"exitcode": 0, "still_installed": False}
    assert "the zygote did not fork a rank" in err and "nothing answers" in err
    dead = run_rt("zygote", "status", env=zygote_env)
    assert dead.returncode == 1 and "the zygote died" in dead.stdout
    fresh = start_zygote(zygote_env)
    assert fresh["pid"] != status["pid"] and fresh["stale"] is None


def test_a_zygote_whose_socket_is_removed_exits(zygote_env):
    status = start_zygote(zygote_env)
    (Path(zygote_env["RT_CACHE_DIR"]) / "zygote" / "socket").unlink()
    assert wait_gone(status["pid"], timeout=5)


def test_a_stale_zygote_is_refused_the_caller_falls_back_and_start_replaces_it(
    zygote_env, tmp_path, tiny_llama
):
    site = tmp_path / "site"
    write_distribution(
        site,
        "rt-probe-plugin",
        "1.0",
        {"rt_probe_plugin": "from rt.core import hookimpl\n"},
        {"rt.plugins": {"probe": "rt_probe_plugin"}},
    )
    env = {**zygote_env, "PYTHONPATH": str(site), "RT_PLUGINS": "probe"}
    status = start_zygote(env)
    assert status["stale"] is None and status["versions"]["rt-probe-plugin"] == "1.0"
    info = next(site.glob("rt_probe_plugin-1.0.dist-info"))
    meta = info / "METADATA"
    meta.write_text(meta.read_text().replace("Version: 1.0", "Version: 1.1"))
    info.rename(site / "rt_probe_plugin-1.1.dist-info")
    reason = "rt-probe-plugin 1.0 was imported; 1.1 is installed now"
    assert zygote_status(env)["stale"] == reason

    trace = tmp_path / "trace.json"
    out = run_rt(
        "generate",
        str(tiny_llama),
        "Hello",
        "--max-tokens",
        "2",
        "--profile",
        "fast-startup",
        "--startup-trace",
        str(trace),
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [span] = [
        e["args"]
        for e in json.loads(trace.read_text())["traceEvents"]
        if e.get("ph") == "X" and e["name"] == "preload" and e["args"]["plugin"] == "zygote"
    ]
    assert span["outcome"] == "skipped" and reason in span["reason"]
    assert zygote_status(env)["forks"] == 0

    replaced = run_rt("zygote", "start", env=env, timeout=300)
    assert replaced.returncode == 0 and f"replacing zygote pid {status['pid']}" in replaced.stdout
    assert wait_gone(status["pid"])
    fresh = zygote_status(env)
    assert fresh["stale"] is None and fresh["versions"]["rt-probe-plugin"] == "1.1"

    # Current, but importing a plugin this start does not select: replaced, saying which.
    unselected = {k: v for k, v in env.items() if k != "RT_PLUGINS"}
    again = run_rt("zygote", "start", env=unselected, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        f"replacing zygote pid {fresh['pid']}: it imported probe, which this start does not "
        "select" in again.stdout
    )
    assert wait_gone(fresh["pid"])
    assert "probe" not in zygote_status(unselected)["plugins"]
