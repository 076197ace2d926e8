"""A ``/dev/shm`` too small for rt's shared-memory segments (a container's default is
64 MiB; TP=8's collectives alone take 64 MiB), or read-only: the ranks fall back to
gloo with a warning, instead of dying of SIGBUS at the first step that touches a page
past its room, or failing to start.

Where the machine allows it (root, ``unshare``), ``rt`` runs in its own mount namespace
with a 2 MiB tmpfs on ``/dev/shm`` (read-only for the second case), and the prompt is
long enough that its prefill writes ~8 MiB of activations through the collectives'
slots: without the reservation the small one dies of SIGBUS. Elsewhere
``faulty_fs/sitecustomize.py`` makes the reservation fail with ENOSPC, or the segment's
creation with EROFS, as the kernel would (``RT_TEST_SIMULATE_FS_FAULTS=1`` forces that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving_models import write_tp3_servable_model

FAULTY_FS = Path(__file__).parent / "faulty_fs"
PROMPT = "Hello world! " * 75  # 900 tokens: 384 floats each, per rank, per all-reduce
MOUNT = 'mount -t tmpfs -o {options}size=2m,mode=1777 tmpfs /dev/shm && exec "$@"'


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tp3_servable_model(
        tmp_path_factory.mktemp("shm-full"),
        seed=5,
        hidden_size=384,
        intermediate_size=768,
        max_position_embeddings=2048,
    )


def _can_unshare() -> bool:
    if os.environ.get("RT_TEST_SIMULATE_FS_FAULTS") or os.geteuid() != 0:
        return False
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = ["unshare", "-m", "sh", "-c", MOUNT.format(options=""), "sh", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def _generate(model: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rt", "generate", str(model), PROMPT, "--json"]
    cmd += ["--tp", "3", "--no-zygote", "--max-tokens", "4", "-p", "shm-broadcast", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RT_DEBUG", None)
    if fault is not None and _can_unshare():
        mount = MOUNT.format(options="ro," if fault == "ro" else "")
        cmd = ["unshare", "-m", "sh", "-c", mount, "sh", *cmd]
    elif fault is not None:
        path = os.pathsep.join(p for p in (str(FAULTY_FS), env.get("PYTHONPATH")) if p)
        env.update(PYTHONPATH=path, RT_TEST_FS_FAULT=f"{fault}:/dev/shm")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def gloo_tokens(model: Path) -> list[int]:
    # The same arithmetic as the fallback: gloo's all-reduce (the metadata channel does
    # not touch the numbers), so the tokens must match exactly.
    gloo = _generate(model, "--set", "parallel.shm_collectives=false")
    assert gloo.returncode == 0, gloo.stderr[-3000:]
    return json.loads(gloo.stdout)["token_ids"]


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("full", "/dev/shm has no room for a {mib} MiB shared-memory segment"),
        ("ro", "cannot create a shared-memory segment in /dev/shm: Read-only file system"),
    ],
)
def test_a_small_or_read_only_dev_shm_falls_back_to_gloo_with_the_same_tokens(
    model, gloo_tokens, fault, why
):
    run = _generate(model, fault=fault)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["token_ids"] == gloo_tokens
    err = run.stderr
    collectives, ring = why.format(mib="24.0"), why.format(mib="4.0")
    assert f"the TP ranks use gloo collectives: {collectives}" in err
    assert f"shm-broadcast sends step metadata over gloo: {ring}" in err
    assert "--shm-size" in err or fault == "ro"
    assert f"collectives=gloo: {collectives[:40]}" in err  # the load-weights span says why
    assert "shm_ranks=0; gloo_ranks=2" in err  # the metadata-broadcast span
    assert "Traceback" not in err
