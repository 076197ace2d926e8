"""Streaming detokenization and stop strings: what streams equals what a full decode gives."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rt.plugins.tp import detokenizer
from rt.plugins.tp.detokenizer import IncrementalDetokenizer, StopChecker
from rt.plugins.tp.tokenizer import Tokenizer

NAMES = ["byte_level_dir", "llama2_dir", "default_model_dir"]
PROMPT = "Hello there, "


@pytest.fixture(scope="session")
def tokenizers(byte_level_dir: Path, llama2_dir: Path, default_model_dir: Path) -> dict:
    return {
        "byte_level_dir": Tokenizer.from_dir(byte_level_dir),
        "llama2_dir": Tokenizer.from_dir(llama2_dir),
        "default_model_dir": Tokenizer.from_dir(default_model_dir),
    }


def _stream(tok: Tokenizer, prompt: list[int], ids: list[int], skip: bool) -> list[str]:
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas = [detok.add(i) for i in ids]
    deltas.append(detok.finish())
    assert detok.text == "".join(deltas)
    return deltas


def _expected(tok: Tokenizer, prompt: list[int], ids: list[int], skip: bool) -> str:
    full = tok.decode(prompt + ids, skip_special_tokens=skip)
    head = tok.decode(prompt, skip_special_tokens=skip)
    assert full.startswith(head)
    return full[len(head) :]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), with_prompt=st.booleans(), skip=st.booleans())
def test_random_ids_stream_to_the_full_decode(
    tokenizers: dict, name: str, data: st.DataObject, with_prompt: bool, skip: bool
) -> None:
    tok = tokenizers[name]
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    prompt = tok.encode(PROMPT) if with_prompt else []
    assert "".join(_stream(tok, prompt, ids, skip)) == _expected(tok, prompt, ids, skip)


@pytest.mark.parametrize("name", NAMES)
def test_split_characters_are_never_streamed_as_replacement(tokenizers: dict, name: str) -> None:
    tok = tokenizers[name]
    text = " café 🤖🚀 こんにちは世界 Привет"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # some characters really are split across tokens
    deltas = _stream(tok, tok.encode(PROMPT), ids, skip=True)
    assert not any("\ufffd" in d for d in deltas)
    assert (
        "".join(deltas)
        == tok.decode(tok.encode(PROMPT) + ids)[len(tok.decode(tok.encode(PROMPT))) :]
    )
    assert "".join(deltas).endswith(text.strip())


def test_llama_leading_space_survives_windowing(tokenizers: dict) -> None:
    tok = tokenizers["llama2_dir"]
    ids = tok.encode(" world is big", add_special_tokens=False)
    deltas = _stream(tok, tok.encode("Hello"), ids, skip=True)
    assert "".join(deltas).startswith(" ")  # the decoder's Strip applies to the prompt only
    assert tok.decode(tok.encode("Hello") + ids) == "Hello" + "".join(deltas)


def _reference_cut(text: str, stop: tuple[str, ...]) -> str:
    hits = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(hits)] if hits else text


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab\nc", max_size=40),
    stop=st.lists(st.text(alphabet="ab\nc", max_size=4), max_size=3).map(tuple),
    cuts=st.lists(st.integers(0, 40), max_size=12),
    # 1: every stop string counts as long, and holds back its length - 1 characters
    exact_up_to=st.sampled_from([detokenizer.EXACT_HOLD_BACK_CHARS, 1]),
)
def test_stop_strings_stream_exactly_the_cut_text(
    text: str, stop: tuple, cuts: list[int], exact_up_to: int
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    with patch.object(detokenizer, "EXACT_HOLD_BACK_CHARS", exact_up_to):
        _check_stop_strings(deltas, stop)


def _check_stop_strings(deltas: list[str], stop: tuple) -> None:
    checker = StopChecker(stop)
    streamed, snapshots, seen = "", [], ""
    for delta in deltas:
        seen += delta
        streamed += checker.add(delta)
        snapshots.append(streamed)
        if checker.stopped:
            break
    if not checker.stopped:
        streamed += checker.finish()
    # Generation stops at the first delta that completes a stop string, so the answer is
    # the text seen so far cut before its earliest stop string.
    expected = _reference_cut(seen, stop)
    assert streamed == expected == checker.text
    assert checker.stopped == (expected != seen or any(s and s in seen for s in stop))
    assert not any(s and s in checker.text for s in stop)
    # Never ahead of the final text: no partial stop string ever leaks out.
    assert all(expected.startswith(snap) for snap in snapshots)
    if checker.stopped:
        assert seen[len(expected) :].startswith(checker.matched)
        assert checker.add("more") == "" and checker.finish() == ""


def test_stop_checker_holds_back_only_possible_stop_prefixes() -> None:
    checker = StopChecker(("</answer>", "\n\n"))
    assert checker.add("The answer is 4") == "The answer is 4"
    assert checker.add(" </ans") == " "  # "</ans" may still become "</answer>"
    assert checker.add("wer>") == "" and checker.stopped
    assert checker.matched == "</answer>" and checker.text == "The answer is 4 "
    assert checker.finish() == ""

    nothing = StopChecker(())
    assert nothing.add("abc") == "abc" and nothing.finish() == ""
    tail = StopChecker(("xyz",))
    assert tail.add("abcx") == "abc" and tail.finish() == "x" and not tail.stopped


def test_a_long_stop_string_holds_back_its_length_less_one() -> None:
    stop = "<" * (detokenizer.EXACT_HOLD_BACK_CHARS + 1)
    checker = StopChecker((stop,))
    assert checker.add("a" * len(stop)) == "a"  # the rest might begin the stop string
    assert checker.add("b") == "a" and checker.finish() == "a" * (len(stop) - 2) + "b"
    assert not checker.stopped
    cut = StopChecker((stop,))
    assert cut.add("x" * 200) == "x" * (201 - len(stop))
    assert cut.add(stop + "tail") == "x" * (len(stop) - 1) and cut.stopped
    assert cut.text == "x" * 200


def test_detokenizer_and_stop_checker_together(tokenizers: dict) -> None:
    tok = tokenizers["default_model_dir"]
    ids = tok.encode("Paris is nice.\n\nIt is big.", add_special_tokens=False)
    detok, checker = IncrementalDetokenizer(tok, tok.encode(PROMPT)), StopChecker(("\n\n",))
    streamed = ""
    for i in ids:
        streamed += checker.add(detok.add(i))
        if checker.stopped:
            break
    assert checker.stopped and streamed == "Paris is nice."
