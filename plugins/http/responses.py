"""OpenAI response shapes: full responses, streamed chunks, logprobs, usage.

Pure functions over ``rt.core.engine`` records, field names as the OpenAI API
defines them so the official client parses them unchanged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
from rt.core.engine import GenerationOutput, TokenLogprob
from rt.plugins.http.openai_api import Kind, ParsedRequest


def new_id(kind: Kind) -> str:
    return ("cmpl-" if kind == "completion" else "chatcmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(reason: str | None) -> str | None:
    # "abort" and "error" never reach a response body (the app turns them into errors).
    return reason if reason in (None, "stop", "length") else "stop"


def completion_logprobs(lps: Sequence[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions shape: parallel lists (an echoed prompt's first token has
    null for its logprob and its alternatives)."""
    text_offset, pos = [], offset
    for lp in lps:
        text_offset.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [
            None if lp.logprob is None else {tok: v for _, tok, v in lp.top} for lp in lps
        ],
        "text_offset": text_offset,
    }


def echoed(out: GenerationOutput, prompt_text: str) -> GenerationOutput:
    """``out`` with the prompt before it: its text, and its tokens' logprobs when the
    request asked for them (``out.prompt_logprobs``)."""
    return attrs.evolve(
        out, text=prompt_text + out.text, logprobs=(out.prompt_logprobs or ()) + out.logprobs
    )


def echo_only(out: GenerationOutput) -> GenerationOutput:
    """What a request for the prompt alone (echo, max_tokens 0) shows of ``out``: not the
    one token the engine made to score the prompt."""
    reason = out.finish_reason
    return attrs.evolve(
        out,
        text="",
        token_ids=(),
        logprobs=(),
        completion_tokens=0,
        finish_reason="length" if reason in ("stop", "length") else reason,
    )


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(lps: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {**_entry(lp.token, lp.logprob), "top_logprobs": [_entry(t, v) for _, t, v in lp.top]}
            for lp in lps
        ]
    }


def chunk(
    parsed: ParsedRequest,
    request_id: str,
    model: str,
    out: GenerationOutput | None,
    *,
    text_offset: int = 0,
    first: bool = False,
    index: int = 0,
) -> dict[str, Any]:
    """One streamed chunk of choice ``index``. ``out`` None with ``first`` is chat's
    role-only chunk."""
    created = int(time.time())
    reason = finish_reason(out.finish_reason) if out is not None else None
    text = out.text if out is not None else ""
    lps = out.logprobs if out is not None else ()
    if parsed.kind == "completion":
        choice = {
            "index": index,
            "text": text,
            "logprobs": completion_logprobs(lps, text_offset)
            if parsed.logprobs is not None
            else None,
            "finish_reason": reason,
        }
        obj = "text_completion"
    else:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": chat_logprobs(lps) if parsed.logprobs is not None and lps else None,
            "finish_reason": reason,
        }
        obj = "chat.completion.chunk"
    return {
        "id": request_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
    }


def _usage(outs: Sequence[GenerationOutput | None], n: int) -> dict[str, int]:
    """Each prompt once (choice ``i`` is prompt ``i // n``'s), the completion tokens of
    every choice."""
    prompts = sum(o.prompt_tokens for o in outs[::n] if o is not None)
    return usage(prompts, sum(o.completion_tokens for o in outs if o is not None))


def usage_chunk(
    parsed: ParsedRequest,
    request_id: str,
    model: str,
    outs: Sequence[GenerationOutput | None],
    n: int,
) -> dict:
    obj = "text_completion" if parsed.kind == "completion" else "chat.completion.chunk"
    return {
        "id": request_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": _usage(outs, n),
    }


def _choice(parsed: ParsedRequest, index: int, out: GenerationOutput) -> dict[str, Any]:
    reason = finish_reason(out.finish_reason)
    if parsed.kind == "completion":
        logprobs = completion_logprobs(out.logprobs, 0) if parsed.logprobs is not None else None
        return {"index": index, "text": out.text, "logprobs": logprobs, "finish_reason": reason}
    return {
        "index": index,
        "message": {"role": "assistant", "content": out.text},
        "logprobs": chat_logprobs(out.logprobs) if parsed.logprobs is not None else None,
        "finish_reason": reason,
    }


def full_response(
    parsed: ParsedRequest,
    request_id: str,
    model: str,
    outs: Sequence[GenerationOutput],
    n: int,
) -> dict[str, Any]:
    """The non-streamed body, from each choice's merged output (``n`` per prompt)."""
    return {
        "id": request_id,
        "object": "text_completion" if parsed.kind == "completion" else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(parsed, i, out) for i, out in enumerate(outs)],
        "usage": _usage(outs, n),
    }
