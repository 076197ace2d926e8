"""A worker rank that dies mid-generation fails requests fast, naming the rank."""

from __future__ import annotations

from tests.conftest import REPO
from tests.engine_e2e.kill_rank import run_in_subprocess


def test_killed_rank_fails_requests_naming_it(tiny_llama):
    returncode, report, stderr, _ = run_in_subprocess(tiny_llama, [], REPO)
    assert returncode == 0, stderr[-3000:]
    assert report["finished"], report
    assert report["elapsed"] < 10, "the error arrives within a few seconds"
    assert report["errors"], "requests in flight get an error, not a silent end"
    assert all("rank 1" in e and "SIGKILL" in e for e in report["errors"]), report["errors"]
    assert "rank 1" in report["late"] and "SIGKILL" in report["late"]
    assert not report["alive"], "no process is left behind"
