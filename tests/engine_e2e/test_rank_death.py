"""A worker rank that dies mid-generation fails requests fast, naming the rank."""

from __future__ import annotations

from tests.conftest import REPO
from tests.engine_e2e.kill_rank import check_killed_rank_report, run_in_subprocess


def test_killed_rank_fails_requests_naming_it(tiny_llama):
    returncode, report, stderr, _ = run_in_subprocess(tiny_llama, [], REPO)
    assert returncode == 0, stderr[-3000:]
    check_killed_rank_report(report, rank=1)
