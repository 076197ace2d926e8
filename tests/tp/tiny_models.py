"""Tiny random HF checkpoints (written with transformers) and helpers that drive a
``ModelRunner`` the way the engine does. Shared by the tests under ``tests/tp``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from rt.core.step import SamplingParams, SeqStep, StepMetadata

# name -> (transformers class names, config kwargs, save kwargs)
CHECKPOINTS: dict[str, tuple[str, dict, dict]] = {
    # GQA (4 query heads over 2 KV heads), tied embeddings
    "llama_gqa_tied": (
        "Llama",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        {},
    ),
    # QKV bias, untied embeddings
    "qwen2_bias": (
        "Qwen2",
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
        {},
    ),
    # odd sizes: 6 query heads over 2 KV heads, a vocabulary TP=2 does not divide evenly
    # after padding (251), explicit head_dim different from hidden/heads
    "llama_odd": (
        "Llama",
        dict(
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=12,
            vocab_size=251,
            tie_word_embeddings=False,
        ),
        {},
    ),
    # Llama 3 rope scaling, written in several shards with an index
    "llama3_rope_sharded": (
        "Llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            rope_theta=500.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            tie_word_embeddings=False,
        ),
        {"max_shard_size": "40KB"},
    ),
    # the Mistral architecture name maps onto the Llama model
    "mistral": (
        "Mistral",
        dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None),
        {},
    ),
}

_BASE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=None,
    eos_token_id=None,  # so generate() never stops early: runs compare all tokens
    pad_token_id=None,
)


def write_checkpoint(
    name: str,
    directory: str | Path,
    seed: int = 0,
    max_shard_size: str | None = None,
    **overrides,
) -> Path:
    """Write checkpoint ``name`` (a key of CHECKPOINTS) into ``directory``; returns it.
    ``overrides`` change config fields; ``max_shard_size`` forces a sharded checkpoint."""
    import transformers

    family, kwargs, save_kwargs = CHECKPOINTS[name]
    config_cls = getattr(transformers, f"{family}Config")
    model_cls = getattr(transformers, f"{family}ForCausalLM")
    config = config_cls(**{**_BASE, **kwargs, **overrides})
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    _randomize(model, seed)
    directory = Path(directory)
    if max_shard_size is not None:
        save_kwargs = {**save_kwargs, "max_shard_size": max_shard_size}
    model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
    return directory


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # HF init leaves norms at 1 and biases at 0, which would hide loading mistakes.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def load_reference(directory: str | Path) -> torch.nn.Module:
    """The transformers model of a checkpoint, float32 and eager attention."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def reference_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(length)]


class BlockTables:
    """A toy block allocator: hands out blocks in a shuffled order so that every
    sequence's blocks are scattered through the cache."""

    def __init__(self, num_blocks: int, block_size: int, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.block_size = block_size
        self.tables: dict[int, list[int]] = {}

    def cover(self, seq_id: int, num_tokens: int) -> tuple[int, ...]:
        table = self.tables.setdefault(seq_id, [])
        while len(table) * self.block_size < num_tokens:
            table.append(self.free.pop())
        return tuple(table)


def full_logits(runner, prompt: list[int], blocks: BlockTables, seq_id: int = 0) -> torch.Tensor:
    """Logits of every prompt position (one prefill step through the runner's model)."""
    from rt.plugins.tp.layers.attention_metadata import build_attention_metadata

    seq = SeqStep(seq_id, tuple(prompt), 0, blocks.cover(seq_id, len(prompt)))
    meta = build_attention_metadata(
        StepMetadata.from_seqs(0, [seq]), runner.block_size, runner.device
    )
    with torch.inference_mode():
        hidden = runner.model(torch.tensor(prompt, device=runner.device), meta.positions, meta)
        return runner.model.compute_logits(hidden).float()


def assert_same_picks(got: torch.Tensor, expected: torch.Tensor, margin: float) -> None:
    """``got``'s greedy pick (argmax of the last dim) is ``expected``'s wherever that one's
    best logit leads its runner-up by more than ``margin``; at the near-ties left, where
    rounding of another kernel can swap the two, it is one of ``expected``'s tokens within
    ``margin`` of the best. ``margin``: twice the largest ``|got - expected|`` the caller
    expects, as that moves a gap by at most that much."""
    top = expected.topk(2, dim=-1).values
    clear = top[..., 0] - top[..., 1] > margin
    picks = got.argmax(-1)
    assert clear.float().mean() >= 0.5, "mostly near-ties: a prompt that tests nothing"
    assert torch.equal(picks[clear], expected.argmax(-1)[clear])
    assert (expected.gather(-1, picks.unsqueeze(-1)).squeeze(-1) >= top[..., 0] - margin).all()


def greedy_decode(
    runner,
    prompts: list[list[int]],
    n: int,
    blocks: BlockTables,
    prefill_chunk: int | None = None,
) -> list[list[int]]:
    """Greedy-decode ``n`` tokens for every prompt, batched: the prompts are prefilled
    together (in chunks of ``prefill_chunk`` tokens if given), then every step feeds
    each sequence its last token."""
    greedy = SamplingParams(temperature=0.0, max_tokens=n)
    seqs = [list(p) for p in prompts]
    done = [0] * len(prompts)  # tokens already in the KV cache
    outputs: list[list[int]] = [[] for _ in prompts]
    step_id = 0
    while any(len(o) < n for o in outputs):
        steps = []
        for i, seq in enumerate(seqs):
            if len(outputs[i]) >= n:
                continue
            todo = len(seq) - done[i]
            if prefill_chunk is not None:
                todo = min(todo, prefill_chunk)
            end = done[i] + todo
            table = blocks.cover(i, end)
            steps.append(
                SeqStep(i, tuple(seq[done[i] : end]), done[i], table, end == len(seq), 0, greedy)
            )
        logits = runner.run(StepMetadata.from_seqs(step_id, steps))
        step_id += 1
        sampled = [s for s in steps if s.sample]
        for s in steps:
            done[s.seq_id] = s.start_pos + len(s.token_ids)
        if logits is not None:
            for s, tok in zip(sampled, logits.argmax(-1).tolist(), strict=True):
                outputs[s.seq_id].append(tok)
                seqs[s.seq_id].append(tok)
    return outputs


def prompt_logprobs_in_chunks(
    runner, prompt: list[int], chunk: int, blocks: BlockTables, top: int, rank0: bool = True
) -> list:
    """Prefill ``prompt`` in chunks of ``chunk`` tokens as the engine does for a request
    that wants its prompt logprobs (the last chunk samples); rank 0 returns one
    ``TokenLogprobs`` per prompt token after the first, the other ranks []."""
    wants = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=top)
    scored: dict[int, object] = {}
    for step_id, start in enumerate(range(0, len(prompt), chunk)):
        end = min(start + chunk, len(prompt))
        seq = SeqStep(0, tuple(prompt[start:end]), start, blocks.cover(0, end),
                      end == len(prompt), 0, wants)  # fmt: skip
        step = StepMetadata.from_seqs(step_id, [seq])
        runner.run(step)
        next_tokens = ({0: prompt[end]} if end < len(prompt) else {}) if rank0 else None
        out = runner.prompt_logprobs(step, next_tokens)
        if out:  # the last chunk scores nothing when it is the sampled token alone
            first, values = out[0]
            assert first == start + 1
            scored.update({first + k: v for k, v in enumerate(values)})
    return [scored[p] for p in range(1, len(prompt))] if rank0 else []


def reference_prompt_logprobs(ref, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = ref(torch.tensor([prompt])).logits[0]  # [L, V]
    return torch.log_softmax(logits.float(), dim=-1)


def assert_prompt_logprobs_match(
    got: list, expected: torch.Tensor, prompt: list[int], top: int, tol: float = 1e-4
) -> None:
    """``got[p - 1]`` scores prompt token ``p`` from position ``p - 1``'s distribution
    (``expected``: transformers' log-softmax), within ``tol``."""
    assert len(got) == len(prompt) - 1
    for p, lp in enumerate(got, start=1):
        row = expected[p - 1]
        assert lp.token_id == prompt[p]
        assert lp.logprob == pytest.approx(float(row[prompt[p]]), abs=tol)
        assert len(lp.top) == top
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(row.topk(top).values.tolist(), abs=tol)
        for token, v in lp.top:  # each named token has the value it claims
            assert float(row[token]) == pytest.approx(v, abs=tol)
