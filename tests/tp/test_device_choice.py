"""Which device each rank takes, the checks that refuse a bad one, and what follows from
it: the dtype ``auto`` means and whether prepared weights are used. CPU only: CUDA is
simulated where the logic needs it (tests/tp/test_gpu.py runs the real thing)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from rt.core.errors import ConfigError
from rt.plugins.tp import device_plan, hooks
from rt.plugins.tp.device_plan import (
    check_gpus_for_ranks,
    check_ranks_fit,
    planned_device_type,
    resolve_dtype_name,
)
from rt.plugins.tp.distributed import describe_device, pick_device, resolve_device_type
from rt.plugins.tp.weights_plan import (
    PREPARED_SKIPPED_ON_CUDA,
    checkpoint_files,
    use_prepared_weights,
    weight_files,
)

from tests.conftest import run_rt
from tests.serving_models import write_servable_model


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch sees ``n`` GPUs (no CUDA call is made: only these two are asked)."""

    def install(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return install


def test_the_harness_runs_cpu_tests_on_the_cpu():
    # tests/conftest.py: on a GPU machine too, unless the run sets RT_PARALLEL__DEVICE
    if os.environ["RT_PARALLEL__DEVICE"] != "cpu":
        pytest.skip("this run sets RT_PARALLEL__DEVICE itself")
    from rt.core.profile_registry import load_config

    assert load_config().parallel.device == "cpu"
    result = run_rt("profiles", "latency", "--json")  # an rt process a test starts
    assert json.loads(result.stdout)["config"]["parallel"]["device"] == "cpu"


def test_cpu_and_auto_without_cuda_pick_the_cpu(fake_gpus):
    fake_gpus(0)
    assert pick_device(0, "cpu") == torch.device("cpu")
    assert pick_device(3, "auto", 3) == torch.device("cpu")


def test_cpu_wins_over_a_gpu(fake_gpus):
    fake_gpus(2)
    assert pick_device(1, "cpu", 1) == torch.device("cpu")
    assert resolve_device_type("auto") == "cuda"


def test_cuda_without_a_device_says_why_and_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"parallel.device = cuda, but .*--device cpu"):
        pick_device(0, "cuda")


def test_each_local_rank_takes_its_own_gpu(fake_gpus):
    fake_gpus(2)
    assert pick_device(0, "auto", 0) == torch.device("cuda", 0)
    assert pick_device(1, "cuda", 1) == torch.device("cuda", 1)
    # `rt worker` on another node: no local index known, rank modulo the GPUs
    assert pick_device(5, "cuda", None) == torch.device("cuda", 1)


def test_a_rank_past_the_gpus_is_refused_naming_both_numbers(fake_gpus):
    fake_gpus(1)
    with pytest.raises(ConfigError, match=r"local rank 1 on this node, which has 1 visible GPU"):
        pick_device(1, "auto", 1)


def test_ranks_fit_names_both_numbers_and_the_fixes():
    check_ranks_fit(2, 2)
    check_ranks_fit(4, None)  # unknown here: the ranks check
    with pytest.raises(ConfigError) as e:
        check_ranks_fit(2, 1)
    message = str(e.value)
    assert "2 ranks" in message and "1 visible GPU" in message
    assert "--tp 1" in message and "--device cpu" in message


def test_the_driver_check_with_torch(fake_gpus):
    fake_gpus(1)
    assert check_gpus_for_ranks(1, "auto", use_torch=True) == "cuda"
    with pytest.raises(ConfigError, match="2 ranks would run on this node but it has 1"):
        check_gpus_for_ranks(2, "auto", use_torch=True)
    assert check_gpus_for_ranks(4, "cpu", use_torch=True) == "cpu"


def test_the_driver_check_without_torch(monkeypatch):
    monkeypatch.setattr(device_plan, "cuda_present", lambda: True)
    monkeypatch.setattr(device_plan, "visible_gpu_count", lambda: 2)
    assert check_gpus_for_ranks(2, "auto", use_torch=False) == "cuda"
    with pytest.raises(ConfigError, match="3 ranks would run on this node but it has 2"):
        check_gpus_for_ranks(3, "cuda", use_torch=False)
    monkeypatch.setattr(device_plan, "visible_gpu_count", lambda: 0)
    with pytest.raises(ConfigError, match="parallel.device = cuda, but"):
        check_gpus_for_ranks(1, "cuda", use_torch=False)


class _NoRanks:
    @classmethod
    def start(cls, *args, **kwargs):
        raise AssertionError("a rank was started")


def test_too_many_ranks_fail_before_any_rank_starts(fake_gpus, monkeypatch, tmp_path):
    from rt.core.profile_registry import load_config
    from rt.plugins.tp import workers

    fake_gpus(1)
    monkeypatch.setattr(workers, "WorkerGroup", _NoRanks)
    model = write_servable_model(tmp_path / "m")
    config = load_config(environ={}, cli=[("parallel.tp", "2", "--tp")])
    runtime = SimpleNamespace(
        result=lambda name: SimpleNamespace(path=model), services={}, selection=None
    )
    with pytest.raises(ConfigError, match="2 ranks would run on this node but it has 1 visible"):
        hooks.rt_start_workers(config, runtime)
    assert "device" not in runtime.services  # not even rank 0's device was chosen


def test_torch_free_guess(monkeypatch, tmp_path):
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setattr(device_plan, "_NVIDIA_PROC", proc)
    monkeypatch.setattr(device_plan, "_DEV", dev)
    monkeypatch.setattr(device_plan, "_torch_is_cpu_build", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert not device_plan.cuda_present() and device_plan.visible_gpu_count() is None
    # a container that hides /proc/driver/nvidia but passes the device nodes
    for n in range(4):
        (dev / f"nvidia{n}").touch()
    (dev / "nvidiactl").touch()
    assert device_plan.cuda_present() and device_plan.visible_gpu_count() == 4
    assert planned_device_type("auto") == "cuda" and planned_device_type("cpu") == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert device_plan.visible_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not device_plan.cuda_present() and device_plan.visible_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert planned_device_type("auto") == "cpu"
    # the driver's /proc entries count the GPUs when they are there
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (proc / "gpus" / "0000:17:00.0").mkdir(parents=True)
    (proc / "version").write_text("NVRM version: 550")
    assert device_plan.visible_gpu_count() == 1
    monkeypatch.setattr(device_plan, "_torch_is_cpu_build", lambda: True)
    assert not device_plan.cuda_present() and device_plan.visible_gpu_count() == 0


def test_dtype_auto_is_bfloat16_for_float32_on_cuda_only():
    assert resolve_dtype_name("auto", "float32", "cuda") == "bfloat16"
    assert resolve_dtype_name("auto", "float16", "cuda") == "float16"
    assert resolve_dtype_name("auto", "bfloat16", "cuda") == "bfloat16"
    assert resolve_dtype_name("auto", "float32", "cpu") == "float32"
    assert resolve_dtype_name("float32", "float32", "cuda") == "float32"
    config = SimpleNamespace(model=SimpleNamespace(dtype="auto"))
    assert hooks._dtype(config, torch.device("cuda", 0), "float32") == torch.bfloat16
    assert hooks._dtype(config, torch.device("cpu"), "float32") == torch.float32


def test_prepared_weights_are_for_cpu_ranks_only(tmp_path):
    assert use_prepared_weights(True, "cpu") == (True, None)
    assert use_prepared_weights(False, "cpu") == (False, None)
    assert use_prepared_weights(False, "cuda") == (False, None)
    assert use_prepared_weights(True, "cuda") == (False, PREPARED_SKIPPED_ON_CUDA)
    # the prefetch asks the same question: on CUDA it reads the checkpoint
    model = write_servable_model(tmp_path / "m")
    assert weight_files(model, 0, 1, "bfloat16", "cuda", True) == checkpoint_files(model)


def test_describe_device_names_the_cpu():
    assert describe_device(torch.device("cpu")).startswith("cpu (")


def test_device_flag_reaches_the_ranks_and_cuda_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model = write_servable_model(tmp_path / "m")
    result = run_rt("generate", str(model), "Hi", "--device", "cuda", "--max-tokens", "1")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("rt: error")]
    assert len(lines) == 1 and "parallel.device = cuda" in lines[0], result.stderr[-2000:]


def test_every_rank_notes_its_device(tmp_path):
    from tests.engine_e2e.engine_helpers import start_runtime

    runtime = start_runtime(write_servable_model(tmp_path / "m"), ("parallel.tp", "2"))
    try:
        notes = [
            s.notes
            for s in runtime.timeline.spans()
            if s.stage == "load-weights" and s.kind == "hook"
        ]
        assert len(notes) == 2
        assert all(n["device"].startswith("cpu (") for n in notes), notes
    finally:
        runtime.shutdown()
