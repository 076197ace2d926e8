"""The engine with ``--plugins=shm-broadcast`` at TP=2: the same tokens as with the
built-in channel, and a killed worker rank is reported fast with no segment left."""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import REPO, run_rt
from tests.engine_e2e.kill_rank import run_in_subprocess
from tests.serving_models import write_servable_model

from rt_shm_broadcast.ring import SHM_DIR

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return write_servable_model(tmp_path_factory.mktemp("tiny-llama"), "llama_gqa_tied", seed=1)


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(f"rt-shm-{pid}-")]


def test_generate_is_token_identical_with_each_channel(tiny_llama):
    outputs = {}
    for plugins in ([], ["--plugins=shm-broadcast"]):
        result = run_rt(
            "generate", str(tiny_llama), PROMPT, "--max-tokens", "24", "--json", "--tp", "2",
            *plugins,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[tuple(plugins)] = json.loads(result.stdout)["token_ids"]
        channel = "shm-broadcast" if plugins else "object-list"
        assert f"metadata-broadcast  {channel}" in result.stderr, "the timeline names the channel"
    assert outputs[()] == outputs[("--plugins=shm-broadcast",)]
    assert len(outputs[()]) == 24


def test_a_prompt_larger_than_a_frame_is_served_not_fatal(tmp_path):
    # A 4 KiB frame holds ~1000 token ids: the prefill step of a longer prompt spills
    # over gloo (a step past the frame used to fail with FrameTooLarge and end the engine).
    model = write_servable_model(tmp_path, "llama_gqa_tied", seed=1, max_position_embeddings=4096)
    prompt = " ".join(["fox"] * 500)
    outputs = {}
    for frame in (None, "4096"):
        env = {"RT_SHM_BROADCAST_FRAME_BYTES": frame} if frame else {}
        result = run_rt(
            "generate", str(model), prompt, "--max-tokens", "8", "--json", "--tp", "2",
            "--plugins=shm-broadcast", env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[frame] = json.loads(result.stdout)
    assert outputs["4096"]["token_ids"] == outputs[None]["token_ids"]


def test_killed_rank_is_reported_fast_and_leaves_no_segment(tiny_llama):
    returncode, report, stderr, pid = run_in_subprocess(tiny_llama, ["shm-broadcast"], REPO)
    assert returncode == 0, stderr[-3000:]
    assert report["channel"] == "ShmBroadcastChannel"
    assert report["segment"].startswith(f"rt-shm-{pid}-")
    assert report["finished"] and report["elapsed"] < 10, report
    assert report["errors"] and all("rank 1" in e and "SIGKILL" in e for e in report["errors"])
    assert report["shutdown_s"] < 15, report
    assert _segments(pid) == [], "the driver's segment is removed"
