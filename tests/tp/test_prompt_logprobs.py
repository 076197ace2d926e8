"""Prompt logprobs (an echoed prompt's) at TP=1 against transformers' log-softmax, over
chunked prefill; the step's rows are derived alike on every rank."""

from __future__ import annotations

import pytest
from rt.core.step import SamplingParams, SeqStep, StepMetadata

from .test_models import BLOCK_SIZE, NUM_BLOCKS, checkpoints, make_runner  # noqa: F401
from .tiny_models import (
    BlockTables,
    assert_prompt_logprobs_match,
    prompt_logprobs_in_chunks,
    random_prompt,
    reference_prompt_logprobs,
)

TOP = 3


@pytest.mark.parametrize("chunk", [40, 7, 1])
def test_prompt_logprobs_match_transformers_whatever_the_chunks(checkpoints, chunk):  # noqa: F811
    path, ref = checkpoints["llama_odd"]
    runner = make_runner(path)
    prompt = random_prompt(40, runner.model_config.vocab_size, seed=3)
    got = prompt_logprobs_in_chunks(runner, prompt, chunk, BlockTables(NUM_BLOCKS, BLOCK_SIZE), TOP)
    assert_prompt_logprobs_match(got, reference_prompt_logprobs(ref, prompt), prompt, TOP)


def test_only_the_first_prefill_of_a_request_that_asks_scores_rows():
    wants = SamplingParams(prompt_logprobs=0)
    step = StepMetadata.from_seqs(
        0,
        [
            SeqStep(1, (5, 6, 7), 0, (0,), sample=False, sampling=wants),  # a chunk: 3 rows
            SeqStep(2, (8, 9), 0, (1,), sample=True, sampling=SamplingParams()),  # not asked
            SeqStep(3, (1, 2), 4, (2, 3), sample=True, sampling=wants),  # last chunk: 1 row
            SeqStep(4, (3, 4, 5), 0, (4,), sample=True, num_generated=2, sampling=wants),
            SeqStep(5, (6,), 9, (5, 6, 7), sample=True, sampling=wants),  # its last token only
        ],
    )
    assert step.prompt_rows() == [(0, 0, 3), (2, 5, 1)]


def test_a_chunk_that_does_not_end_the_prompt_needs_its_next_token(checkpoints):  # noqa: F811
    runner = make_runner(checkpoints["llama_odd"][0])
    blocks = BlockTables(NUM_BLOCKS, BLOCK_SIZE)
    wants = SamplingParams(prompt_logprobs=0)
    step = StepMetadata.from_seqs(
        0, [SeqStep(0, (1, 2, 3), 0, blocks.cover(0, 3), False, 0, wants)]
    )
    runner.run(step)
    with pytest.raises(ValueError, match="no next prompt token"):
        runner.prompt_logprobs(step, {})
