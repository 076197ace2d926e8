"""Model folders for the model-source, tokenizer and detokenizer tests.

``default_model_dir`` converts the real default model once per session (a few seconds)
into a temporary rt cache. The tiny tokenizers are trained here in milliseconds: a
byte-level BPE (GPT-2/SmolLM style) and a Llama-2 style one (``▁`` spaces, byte fallback,
a BOS-adding post-processor, a separate chat_template.jinja), each with a chat template and a generation config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I'm fine, thanks.",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "Numbers: 12345 and 3.14159, dates like 2024-01-31.",
    "Unicode: café, naïve, Ünïcödé, Привет мир, こんにちは世界, 🤖🚀.",
    "def main():\n    print('hi')\n\n\treturn 0",
] * 20

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A template that uses what transformers' environment provides: raise_exception,
# loop controls, namespace, tojson with options, bos_token and add_generation_prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(turns=0) %}"
    "{% if tools %}<|im_start|>tools\n{{ tools | tojson(indent=2) }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{% if message['role'] == 'system' and not loop.first %}{% continue %}{% endif %}"
    "{% set ns.turns = ns.turns + 1 %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write(folder: Path, tokenizer, config: dict, generation: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


@pytest.fixture(scope="session")
def byte_level_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    generation = {"eos_token_id": [0, 2]}
    return _write(tmp_path_factory.mktemp("byte-level"), tok, config, generation)


@pytest.fixture(scope="session")
def llama2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    # Train on ASCII only, so other text must fall back to byte tokens.
    tok.train_from_iterator([line for line in CORPUS if line.isascii()], trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
    )
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    path = tmp_path_factory.mktemp("llama2")
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}[ASSISTANT]{% endif %}"
    )
    return _write(path, tok, config, {"eos_token_id": 2, "bos_token_id": 1})
