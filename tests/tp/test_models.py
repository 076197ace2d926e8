"""The TP=1 engine against transformers on the same tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch
from rt.core.errors import ConfigError, ModelError
from rt.plugins.tp.kv_cache import KVCacheSpec, bytes_per_block, num_blocks_for_budget
from rt.plugins.tp.model_config import ModelConfig
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.models import get_model_class
from rt.plugins.tp.parallel import ParallelContext

from .tiny_models import (
    CHECKPOINTS,
    BlockTables,
    full_logits,
    greedy_decode,
    load_reference,
    random_prompt,
    reference_greedy,
    write_checkpoint,
)

BLOCK_SIZE = 4  # small, so 32 decoded tokens cross many block boundaries
NUM_BLOCKS = 64


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    torch.set_num_threads(2)
    out = {}
    for name in CHECKPOINTS:
        path = write_checkpoint(name, tmp_path_factory.mktemp(name))
        out[name] = (path, load_reference(path))
    return out


def make_runner(path) -> ModelRunner:
    runner = ModelRunner(path, ParallelContext.single(), torch.float32, "cpu", BLOCK_SIZE)
    runner.load_weights()
    runner.allocate_kv_cache(NUM_BLOCKS)
    # The cache is not zeroed (only block 0, the padding target): poison the rest so
    # every test here shows that no unwritten slot is ever read.
    runner.kv_cache[:, :, 1:] = float("nan")
    return runner


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_prompt_logits_match_transformers(checkpoints, name):
    path, ref = checkpoints[name]
    runner = make_runner(path)
    prompt = random_prompt(13, runner.model_config.vocab_size, seed=1)
    ours = full_logits(runner, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    with torch.no_grad():
        theirs = ref(torch.tensor([prompt])).logits[0]
    assert ours.shape == theirs.shape == (13, runner.model_config.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_batched_greedy_decode_matches_generate(checkpoints, name):
    path, ref = checkpoints[name]
    runner = make_runner(path)
    vocab = runner.model_config.vocab_size
    prompts = [random_prompt(n, vocab, seed=n) for n in (5, 11, 1)]
    ours = greedy_decode(runner, prompts, 32, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    assert ours == [reference_greedy(ref, p, 32) for p in prompts]


def test_chunked_prefill_attends_to_the_cached_prefix(checkpoints):
    path, ref = checkpoints["qwen2_bias"]
    runner = make_runner(path)
    prompts = [random_prompt(n, 256, seed=n) for n in (10, 3)]
    ours = greedy_decode(runner, prompts, 8, BlockTables(NUM_BLOCKS, BLOCK_SIZE), prefill_chunk=3)
    assert ours == [reference_greedy(ref, p, 8) for p in prompts]


def test_run_returns_logits_only_for_sampled_seqs(checkpoints):
    from rt.core.step import SeqStep, StepMetadata

    runner = make_runner(checkpoints["llama_odd"][0])
    blocks = BlockTables(NUM_BLOCKS, BLOCK_SIZE)
    step = StepMetadata.from_seqs(
        0,
        (
            SeqStep(0, (1, 2, 3), 0, blocks.cover(0, 3), sample=False),
            SeqStep(1, (4, 5), 0, blocks.cover(1, 2)),
        ),
    )
    logits = runner.run(step)
    assert logits.shape == (1, 251) and logits.dtype == torch.float32
    only_unsampled = StepMetadata.from_seqs(
        1, (SeqStep(0, (6,), 3, blocks.cover(0, 4), sample=False),)
    )
    assert runner.run(only_unsampled) is None


def test_position_past_max_model_len_is_refused(checkpoints):
    from rt.core.step import SeqStep, StepMetadata

    runner = make_runner(checkpoints["llama_odd"][0])
    step = StepMetadata.from_seqs(0, (SeqStep(0, (1,), 256, tuple(range(NUM_BLOCKS))),))
    with pytest.raises(ModelError, match="max_model_len=256"):
        runner.run(step)


# -- config parsing ---------------------------------------------------------------

LLAMA_DICT = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 256,
}


def test_config_defaults_and_old_style_rope_keys():
    c = ModelConfig.from_hf_dict(
        {
            **LLAMA_DICT,
            "num_attention_heads": 4,
            "num_key_value_heads": None,
            "torch_dtype": "bfloat16",
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "eos_token_id": [128001, 128009],
        }
    )
    assert (c.num_key_value_heads, c.head_dim, c.dtype) == (4, 16, "bfloat16")
    assert c.rope_theta == 500000.0 and c.rope_scaling.factor == 32.0
    assert c.eos_token_ids == (128001, 128009) and not c.qkv_bias


def test_qwen2_always_has_qkv_bias_and_no_o_proj_bias():
    c = ModelConfig.from_hf_dict({**LLAMA_DICT, "architectures": ["Qwen2ForCausalLM"]})
    assert c.qkv_bias and not c.o_proj_bias
    c = ModelConfig.from_hf_dict({**LLAMA_DICT, "attention_bias": True})
    assert c.qkv_bias and c.o_proj_bias


def test_unsupported_rope_type_is_named():
    with pytest.raises(ModelError, match="'yarn'.*'default', 'llama3'"):
        ModelConfig.from_hf_dict({**LLAMA_DICT, "rope_scaling": {"rope_type": "yarn"}})


def test_tp_that_does_not_divide_heads_names_both_numbers():
    c = ModelConfig.from_hf_dict(LLAMA_DICT)
    c.check_tp(3)
    with pytest.raises(ModelError, match="tp=4 does not divide num_attention_heads=9.*9 and 3"):
        c.check_tp(4)
    c6 = ModelConfig.from_hf_dict(
        {**LLAMA_DICT, "num_attention_heads": 6, "num_key_value_heads": 2}
    )
    with pytest.raises(ModelError, match="tp=4 does not divide num_attention_heads=6"):
        c6.check_tp(4)
    c4 = ModelConfig.from_hf_dict(
        {**LLAMA_DICT, "num_attention_heads": 8, "num_key_value_heads": 2}
    )
    with pytest.raises(ModelError, match="tp=4 does not divide num_key_value_heads=2"):
        c4.check_tp(4)
    c5 = ModelConfig.from_hf_dict({**LLAMA_DICT, "intermediate_size": 100})
    with pytest.raises(ModelError, match="tp=3 does not divide intermediate_size=100"):
        c5.check_tp(3)


def test_runner_refuses_tp_that_does_not_divide_heads(checkpoints):
    ctx = ParallelContext(rank=0, world_size=4)  # never communicates: fails before
    with pytest.raises(ModelError, match="tp=4 does not divide num_attention_heads=6"):
        ModelRunner(checkpoints["llama_odd"][0], ctx, torch.float32, "cpu")


def test_unknown_architecture_lists_supported_ones():
    with pytest.raises(ModelError, match="'GPT2LMHeadModel'.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        get_model_class("GPT2LMHeadModel")
    assert get_model_class("MistralForCausalLM") is get_model_class("LlamaForCausalLM")


# -- KV cache sizing --------------------------------------------------------------


def test_kv_cache_sizing():
    # 2 (K and V) * 3 layers * 16 tokens * 2 heads * 8 dims * 2 bytes
    assert bytes_per_block(3, 16, 2, 8, torch.bfloat16) == 2 * 3 * 16 * 2 * 8 * 2
    assert num_blocks_for_budget(10 * 3072 + 5, 3, 16, 2, 8, torch.bfloat16) == 10
    with pytest.raises(ConfigError, match="3071 bytes"):
        num_blocks_for_budget(3071, 3, 16, 2, 8, torch.bfloat16)
    cache = KVCacheSpec(3, 16, 2, 8, torch.float32).allocate(5, torch.device("cpu"))
    assert cache.shape == (2, 3, 5, 16, 2, 8) and not cache[:, :, 0].any()


def test_runner_kv_bytes_per_block_matches_allocation(checkpoints):
    runner = make_runner(checkpoints["llama_odd"][0])
    assert runner.kv_cache.numel() * 4 == NUM_BLOCKS * runner.kv_bytes_per_block()
