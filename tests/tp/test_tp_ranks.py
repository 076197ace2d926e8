"""TP=2 for real: two processes, gloo on loopback, compared with transformers.

All checkpoints run in one pair of ranks (spawning costs seconds); the fixture gathers
rank 0's results and each test checks one property of them.
"""

from __future__ import annotations

import pytest
import torch
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from .ranks import run_ranks
from .tiny_models import (
    CHECKPOINTS,
    BlockTables,
    assert_prompt_logprobs_match,
    assert_same_picks,
    full_logits,
    greedy_decode,
    load_reference,
    prompt_logprobs_in_chunks,
    random_prompt,
    reference_greedy,
    reference_prompt_logprobs,
    write_checkpoint,
)

BLOCK_SIZE, NUM_BLOCKS, NEW_TOKENS = 4, 64, 32
PROMPT_LENS = (5, 11, 1)
# mistral has a single KV head, which TP=2 cannot split (KV heads are not replicated)
TP2_CHECKPOINTS = [n for n in CHECKPOINTS if n != "mistral"]
INT4 = "llama_gqa_tied+int4"  # the same checkpoint with int4 weights (layers/int4.py)
PROMPT_LOGPROBS = "llama_odd"  # its 251 tokens do not split evenly over the ranks


def _tp_worker(ctx: ParallelContext, paths: dict) -> dict:
    out = {}
    for name, path in paths.items():
        quantization = "int4" if name == INT4 else "none"
        runner = ModelRunner(path, ctx, torch.float32, "cpu", BLOCK_SIZE, quantization)
        runner.load_weights()
        runner.allocate_kv_cache(NUM_BLOCKS)
        vocab = runner.model_config.vocab_size
        prompt = random_prompt(13, vocab, seed=1)
        logits = full_logits(runner, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
        prompts = [random_prompt(n, vocab, seed=n) for n in PROMPT_LENS]
        tokens = greedy_decode(runner, prompts, NEW_TOKENS, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
        out[name] = dict(logits=logits, tokens=tokens, param_bytes=runner.param_bytes())
        if name == PROMPT_LOGPROBS:
            long_prompt = random_prompt(40, vocab, seed=3)
            blocks = BlockTables(NUM_BLOCKS, BLOCK_SIZE)
            lps = prompt_logprobs_in_chunks(runner, long_prompt, 7, blocks, 3, ctx.rank == 0)
            out[name]["prompt_logprobs"] = lps
    return out


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    paths = {n: write_checkpoint(n, tmp_path_factory.mktemp(n)) for n in TP2_CHECKPOINTS}
    paths[INT4] = paths["llama_gqa_tied"]
    ranks = run_ranks(2, _tp_worker, paths)
    return paths, ranks


@pytest.mark.slow
@pytest.mark.parametrize("name", TP2_CHECKPOINTS)
def test_tp2_matches_transformers(tp2, name):
    paths, ranks = tp2
    ref = load_reference(paths[name])
    vocab = ref.config.vocab_size
    prompt = random_prompt(13, vocab, seed=1)
    with torch.no_grad():
        expected = ref(torch.tensor([prompt])).logits[0]
    prompts = [random_prompt(n, vocab, seed=n) for n in PROMPT_LENS]
    expected_tokens = [reference_greedy(ref, p, NEW_TOKENS) for p in prompts]
    for rank in ranks:  # every rank sees the full-vocabulary logits
        torch.testing.assert_close(rank[name]["logits"], expected, atol=1e-4, rtol=1e-4)
        assert rank[name]["tokens"] == expected_tokens


@pytest.mark.slow
def test_tp2_prompt_logprobs_match_transformers(tp2):
    # every rank projects each slice of prompt rows (the head is vocabulary-parallel);
    # rank 0 alone reduces them to logprobs
    paths, ranks = tp2
    ref = load_reference(paths[PROMPT_LOGPROBS])
    prompt = random_prompt(40, ref.config.vocab_size, seed=3)
    got = ranks[0][PROMPT_LOGPROBS]["prompt_logprobs"]
    assert_prompt_logprobs_match(got, reference_prompt_logprobs(ref, prompt), prompt, 3)
    assert ranks[1][PROMPT_LOGPROBS]["prompt_logprobs"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", TP2_CHECKPOINTS)
def test_tp2_ranks_each_hold_about_half_the_parameters(tp2, name):
    paths, ranks = tp2
    single = ModelRunner(paths[name], ParallelContext.single(), torch.float32, "cpu")
    single.load_weights()
    total = single.param_bytes()
    for rank in ranks:
        # only the RMSNorm weights (and vocab padding) are not split
        assert 0.5 * total <= rank[name]["param_bytes"] < 0.52 * total


@pytest.mark.slow
def test_tp2_int4_matches_tp1_int4(tp2):
    # Each rank packs its own slice (row-parallel ones split the 32-input groups'
    # columns evenly); partial sums are rounded to bfloat16 per rank, so the logits
    # agree to bfloat16's precision, not exactly.
    paths, ranks = tp2
    single = ModelRunner(
        paths[INT4], ParallelContext.single(), torch.float32, "cpu", BLOCK_SIZE, "int4"
    )
    single.load_weights()
    single.allocate_kv_cache(NUM_BLOCKS)
    prompt = random_prompt(13, single.model_config.vocab_size, seed=1)
    expected = full_logits(single, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    for rank in ranks:
        torch.testing.assert_close(rank[INT4]["logits"], expected, atol=0.04, rtol=0.02)
        # up to 0.03 apart here, so greedy picks agree where the best leads by over 0.06;
        # three positions are closer than that (0.026-0.03)
        assert_same_picks(rank[INT4]["logits"], expected, 0.06)
