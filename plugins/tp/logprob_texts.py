"""Logprobs as the API reports them: each token id with its text (no torch)."""

from __future__ import annotations

from collections.abc import Sequence

from rt.core.engine import TokenLogprob
from rt.plugins.tp.engine.sequence import TokenLogprobs
from rt.plugins.tp.tokenizer import Tokenizer


def token_logprob(tokenizer: Tokenizer, lp: TokenLogprobs) -> TokenLogprob:
    """One token's logprob and its alternatives, each with its text (special tokens
    spelled out)."""

    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False)

    top = tuple((t, text(t), v) for t, v in lp.top)
    return TokenLogprob(lp.token_id, text(lp.token_id), lp.logprob, top)


def logprob_texts(tokenizer: Tokenizer, lp: TokenLogprobs | None) -> tuple[TokenLogprob, ...]:
    """A generated token's logprobs, or () when its request asked for none."""
    return () if lp is None else (token_logprob(tokenizer, lp),)


def prompt_logprob_texts(
    tokenizer: Tokenizer, first: int, values: Sequence[TokenLogprobs | None]
) -> tuple[TokenLogprob, ...]:
    """A prompt's logprobs: ``values[0]`` is None (nothing precedes token ``first``), the
    rest were all scored by the prefill."""
    head = TokenLogprob(first, tokenizer.decode([first], skip_special_tokens=False), None)
    return (head, *(token_logprob(tokenizer, lp) for lp in values[1:] if lp is not None))
