from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_e2e.engine_helpers import start_runtime
from tests.serving_models import write_servable_model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_servable_model(tmp_path_factory.mktemp("tiny-llama"), "llama_gqa_tied", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_servable_model(tmp_path_factory.mktemp("tiny-qwen"), "qwen2_bias", seed=2)


@pytest.fixture(scope="module")
def engine(tiny_llama: Path):
    """The real engine (TP=1, in process) on the tiny Llama, one per module."""
    runtime = start_runtime(tiny_llama)
    yield runtime.services["engine"]
    runtime.shutdown()
