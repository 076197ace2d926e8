"""``rt generate`` end to end: the same tokens as transformers, at TP=1 and TP=2."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_rt
from tests.tp.tiny_models import load_reference

PROMPT = "The quick brown fox"


def _reference(folder, prompt: str, n: int) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(prompt).ids
    model = load_reference(folder)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_qwen"])
def test_generate_json_matches_transformers_greedy(model, tp, request):
    folder = request.getfixturevalue(model)
    result = run_rt(
        "generate", str(folder), PROMPT, "--max-tokens", "32", "--json", "--tp", str(tp)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["token_ids"] == _reference(folder, PROMPT, 32)
    assert out["finish_reason"] in ("length", "stop")
    assert "warmup" in result.stderr, "the startup timeline is printed"


def test_tp_that_does_not_divide_heads_fails_naming_both(tiny_llama):
    result = run_rt("generate", str(tiny_llama), PROMPT, "--tp", "3")
    assert result.returncode == 1
    assert "tp=3 does not divide num_attention_heads=4" in result.stderr


def test_startup_trace_file(tiny_llama, tmp_path):
    trace = tmp_path / "t.json"
    result = run_rt(
        "generate", str(tiny_llama), PROMPT, "--max-tokens", "2", "--startup-trace", str(trace)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"}
    assert {"model", "tokenizer", "workers", "load-weights", "kv-cache", "warmup"} <= names
    assert "frontend" not in names
