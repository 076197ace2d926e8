"""rt's tokenizer against transformers' AutoTokenizer on the same folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rt.core.errors import ModelError, RequestError
from rt.plugins.tp.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "Numbers 12345, 3.14159 and 2024-01-31.",
    "Unicode: café naïve Привет こんにちは世界 🤖🚀",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<s>tags</s> look special only in some vocabularies",
    "code:\n\tdef f(x):\n        return x  # ok\r\n",
    "",
]

MESSAGES = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und auf Deutsch? é 日本"},
    ],
]


def _reference(folder: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(params=["byte_level_dir", "llama2_dir", "default_model_dir"])
def folder(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_encode_decode_match_transformers(folder: Path) -> None:
    ours, ref = Tokenizer.from_dir(folder), _reference(folder)
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == ref.encode(text, add_special_tokens=special), (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                    ids, skip_special_tokens=skip
                ), (text, skip)
    assert ours.vocab_size == len(ref)


def test_chat_template_matches_transformers(folder: Path) -> None:
    ours, ref = Tokenizer.from_dir(folder), _reference(folder)
    for messages in MESSAGES:
        for gen in (True, False):
            expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen) == expected


def test_template_globals_tools_and_raise_exception(byte_level_dir: Path) -> None:
    ours, ref = Tokenizer.from_dir(byte_level_dir), _reference(byte_level_dir)
    tools = [{"type": "function", "function": {"name": "f", "description": "<b> & é"}}]
    # A second system message is skipped with {% continue %} (loopcontrols).
    messages = [*MESSAGES[1], {"role": "system", "content": "late"}]
    got = ours.apply_chat_template(messages, tools=tools)
    assert got == ref.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert '"description": "<b> & é"' in got  # tojson(indent=2), no HTML escaping
    assert got.startswith("<|im_start|>") and "late" not in got
    with pytest.raises(RequestError, match="unknown role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_special_ids(default_model_dir: Path, byte_level_dir: Path, llama2_dir: Path) -> None:
    smol = Tokenizer.from_dir(default_model_dir)
    assert smol.eos_token_ids == (2,)
    assert smol.bos_token_id == 1
    assert smol.decode([smol.eos_token_ids[0]], skip_special_tokens=False) == "<|im_end|>"
    # generation_config's list first, then tokenizer_config's eos, without duplicates.
    assert Tokenizer.from_dir(byte_level_dir).eos_token_ids == (0, 2)
    llama = Tokenizer.from_dir(llama2_dir)
    assert llama.encode("hi")[0] == llama.bos_token_id == llama.token_to_id("<s>")


def test_add_bos_token_without_post_processor(llama2_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-post-processor"
    shutil.copytree(llama2_dir, folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = None
    (folder / "tokenizer.json").write_text(json.dumps(data))
    tok = Tokenizer.from_dir(folder)
    ids = tok.encode("Hello world")
    assert ids[0] == tok.bos_token_id
    assert ids[1:] == tok.encode("Hello world", add_special_tokens=False)
    assert ids.count(tok.bos_token_id) == 1

    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    assert Tokenizer.from_dir(folder).encode("Hello world") == ids[1:]


def test_chat_template_sources(llama2_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_dir(llama2_dir)  # chat_template.jinja beside tokenizer_config.json
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "[USER] x [ASSISTANT]"

    folder = tmp_path / "json-template"
    shutil.copytree(llama2_dir, folder)
    (folder / "chat_template.jinja").unlink()
    named = [{"name": "tool_use", "template": "no"}, {"name": "default", "template": "D{{ 1 }}"}]
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": named}))
    assert Tokenizer.from_dir(folder).apply_chat_template([]) == "D1"


def test_errors_name_the_folder(llama2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"{tmp_path}.*no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)

    folder = tmp_path / "no-template"
    shutil.copytree(llama2_dir, folder)
    (folder / "chat_template.jinja").unlink()
    tok = Tokenizer.from_dir(folder)  # completions still work without a template
    assert tok.decode(tok.encode("Hello")) == "Hello"
    with pytest.raises(RequestError, match=f"{folder}.*no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])

    (folder / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(ModelError, match="does not parse"):
        Tokenizer.from_dir(folder).apply_chat_template([])
