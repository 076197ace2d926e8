"""The limit on open files: ``rt`` raises its soft limit to the hard one, so a server
started under a low soft limit (1024 is common) serves more clients than that allows."""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import httpx
import pytest

from tests.http.serve_process import rt_serve

SOFT = 300  # what the server is started with
CLIENTS = 400  # connections open at once: more than SOFT allows


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


async def _many_at_once(url: str) -> list[int]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
        responses = await asyncio.gather(
            *(client.post(url + "/v1/completions", json=body) for _ in range(CLIENTS))
        )
    return [r.status_code for r in responses]


def test_a_low_soft_limit_is_raised_for_the_server_and_its_ranks(http_env, tiny_model, tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * CLIENTS:
        pytest.skip(f"the hard limit on open files here is {hard}: too low to show the raise")
    expected = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))

    args = ("--tp", "2", "--no-zygote")
    log = tmp_path / "serve.log"
    with rt_serve(tiny_model, http_env, log, *args, preexec_fn=low_soft_limit) as served:
        ranks = served.rank_pids()
        assert len(ranks) == 2
        for pid in (served.proc.pid, *ranks.values()):
            assert _soft_limit(pid) == expected, pid
        # The server's own process holds a socket per client: SOFT would refuse some.
        statuses = asyncio.run(_many_at_once(served.url))
        assert statuses == [200] * CLIENTS
