"""Errors the user can fix once a model is found: one ``rt: error:`` line, no traceback.

The model-free cases (a missing model, a bad value, an unknown key, profile or plugin)
are in tests/core/test_cli_errors.py, whose helpers these reuse.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.core.test_cli_errors import one_error_line, run_cli


def test_port_in_use(tiny_llama: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "serve", str(tiny_llama), "--port", str(port))
    one_error_line(result, 2, f"127.0.0.1:{port}", "in use", "--port", "port 0 picks a free one")


def test_tp_size_the_heads_cannot_be_split_by(tiny_llama: Path, tmp_path: Path) -> None:
    # tiny_llama has 4 query heads over 2 KV heads.
    result = run_cli(tmp_path, "generate", str(tiny_llama), "hello", "--tp", "4")
    one_error_line(result, 1, "tp=4", "num_key_value_heads=2", "use a TP size that divides both")


def test_a_kv_cache_larger_than_the_machine(tiny_llama: Path, tmp_path: Path) -> None:
    # Allocated lazily, it would start and be OOM-killed under load.
    result = run_cli(tmp_path, "generate", str(tiny_llama), "hello", "--kv-cache-memory", "64TiB")
    one_error_line(result, 2, "a KV cache of 67108864 MiB is more than the", "available")


def test_a_rank_process_failing_a_stage_is_named_every_time(
    default_cache_dir: Path, tmp_path: Path
) -> None:
    # Ranks 1 and 2 fail in their own processes; each one's report and its exit can
    # reach the driver in one wait. Read after the exit, the report was lost: a bare
    # "rank 1 (pid N) exited with code 1" in about one run of three (default model).
    args = ("--tp", "3", "--kv-cache-memory", "64TiB", "--no-zygote")
    for _ in range(4):
        result = run_cli(tmp_path, "generate", "hello", *args, RT_CACHE_DIR=str(default_cache_dir))
        assert result.returncode in (1, 2), result.stderr[-3000:]
        line = one_error_line(result, result.returncode, "a KV cache of 67108864 MiB")
        assert "for each of the 3 ranks on this node" in line
