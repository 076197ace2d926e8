"""A rank that joins from "another node" with `rt worker` (TCP-store rendezvous on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rt.core.host import free_port

from tests.conftest import run_rt

PROMPT = "The quick brown fox"


@pytest.mark.parametrize("rank0", ["driver", "process"])
def test_rt_worker_joins_the_driver_and_tokens_match_tp1(tiny_llama, rank0):
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rt",
            "worker",
            str(tiny_llama),
            "--rank",
            "1",
            "--tp",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        driver = run_rt(
            "generate",
            str(tiny_llama),
            PROMPT,
            "--max-tokens",
            "16",
            "--json",
            "--tp",
            "2",
            "--set",
            "parallel.local_ranks=1",
            "--set",
            f"parallel.master_port={port}",
            "--set",
            f"parallel.rank0={rank0}",
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        _, worker_err = worker.communicate(timeout=60)
        assert worker.returncode == 0, worker_err[-3000:]
    finally:
        worker.kill()
    single = run_rt("generate", str(tiny_llama), PROMPT, "--max-tokens", "16", "--json")
    assert json.loads(driver.stdout)["token_ids"] == json.loads(single.stdout)["token_ids"]


def test_remote_ranks_need_a_fixed_port(tiny_llama):
    result = run_rt(
        "generate", str(tiny_llama), PROMPT, "--tp", "2", "--set", "parallel.local_ranks=1"
    )
    assert result.returncode != 0
    assert "set parallel.master_port" in result.stderr


def test_a_rendezvous_port_in_use_is_named_with_the_fix(tiny_llama):
    from rt.core.host import listening_socket

    with listening_socket("127.0.0.1") as taken:
        port = taken.getsockname()[1]
        result = run_rt(
            "generate",
            str(tiny_llama),
            PROMPT,
            "--tp",
            "2",
            "--set",
            f"parallel.master_port={port}",
        )
    assert result.returncode != 0
    assert f"cannot listen on parallel.master_addr:master_port = 127.0.0.1:{port}" in result.stderr
    assert "free port" in result.stderr
