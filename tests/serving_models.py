"""Tiny but complete model folders (weights, config, tokenizer, chat template) that the
engine can serve end to end: what ``rt generate`` and ``rt serve`` load in tests."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tp.tiny_models import write_checkpoint

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Hello world! How are you today? I'm fine, thanks.",
    "Numbers: 12345 and 3.14159. Unicode: café, naïve, こんにちは.",
] * 10
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB_SIZE = 300


def write_tokenizer(directory: Path) -> int:
    """A byte-level BPE trained on a few sentences; returns the id of <|im_end|> (EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE
    tok.save(str(directory / "tokenizer.json"))
    eos = tok.token_to_id("<|im_end|>")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "bos_token": None,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return eos


def write_servable_model(
    directory: str | Path, name: str = "llama_gqa_tied", seed: int = 0, **overrides
) -> Path:
    """A tiny random checkpoint of ``name`` (see tests/tp/tiny_models.py) with a tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    eos = write_tokenizer(directory)
    overrides = {"vocab_size": VOCAB_SIZE, "eos_token_id": eos, **overrides}
    write_checkpoint(name, directory, seed=seed, **overrides)
    return directory


def write_tp3_servable_model(directory: str | Path, seed: int = 0, **overrides) -> Path:
    """A servable model that three ranks split: 6 query heads over 3 KV heads, and a
    hidden size and MLP that divide by 3 (``overrides`` may widen them)."""
    shape = dict(hidden_size=48, intermediate_size=96, num_attention_heads=6)
    return write_servable_model(
        directory, seed=seed, **{**shape, "num_key_value_heads": 3, **overrides}
    )
