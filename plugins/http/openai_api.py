"""OpenAI request parsing and validation (the response shapes are in ``responses.py``).

Pure functions over dicts: no Starlette here, so each rule is easy to read next to
the OpenAI API reference.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from rt.core.step import SamplingParams
from rt.plugins.http.errors import ApiError

Kind = Literal["completion", "chat"]
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
DEFAULT_COMPLETION_MAX_TOKENS = 16  # what OpenAI's legacy completions endpoint uses


@attrs.frozen
class ParsedRequest:
    """A validated request, before tokenization."""

    kind: Kind
    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    sampling: SamplingParams  # max_tokens filled in once the prompt length is known
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    messages: tuple[dict, ...] = ()
    logprobs: int | None = None  # None: not asked for; else how many alternatives


def _number(body: dict, key: str, default: float | None, lo: float | None = None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(422, f"{key} must be a number, got {value!r}", param=key)
    if lo is not None and value < lo:
        raise ApiError(422, f"{key} must be >= {lo}, got {value!r}", param=key)
    return value


def _int(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"{key} must be an integer, got {value!r}", param=key)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ApiError(422, f"{key} must be {bound}, got {value!r}", param=key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(422, "stop must be a non-empty string or a list of them", param="stop")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise ApiError(
            422, f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stop)}", param="stop"
        )
    return tuple(stop)


def _common(body: dict, kind: Kind) -> dict[str, Any]:
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise ApiError(422, f"only n=1 is supported, got n={n}", param="n")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f"model must be a string, got {model!r}", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(422, f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(422, "stream_options must be an object", param="stream_options")
    max_tokens = _int(body, "max_tokens", 0)
    if kind == "chat" and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", 0)
    temperature = _number(body, "temperature", 1.0, lo=0.0)
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ApiError(422, f"top_p must be in (0, 1], got {top_p!r}", param="top_p")
    seed = _int(body, "seed", -(2**63))
    return {
        "model": model,
        "stream": bool(stream),
        "include_usage": bool(options.get("include_usage", False)),
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed,
        "stop": _stop(body),
    }


def _sampling(c: dict[str, Any], logprobs: int | None) -> SamplingParams:
    return SamplingParams(
        temperature=c["temperature"],
        top_p=c["top_p"],
        seed=c["seed"],
        max_tokens=max(c["max_tokens"] or 1, 1),
        stop=c["stop"],
        want_logprobs=logprobs is not None,
        logprobs=logprobs or 0,
    )


def parse_completion(body: dict) -> ParsedRequest:
    c = _common(body, "completion")
    prompt = body.get("prompt")
    # OpenAI accepts a batch of prompts; with n=1 only, a batch must hold one.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    text, ids = None, None
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        ids = tuple(prompt)
    else:
        raise ApiError(
            422,
            "prompt must be a string, a list of token ids, or a list holding one of those",
            param="prompt",
        )
    if body.get("echo"):
        raise ApiError(422, "echo is not supported", param="echo")
    logprobs = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    return ParsedRequest(
        kind="completion",
        model=c["model"],
        stream=c["stream"],
        include_usage=c["include_usage"],
        max_tokens=c["max_tokens"],
        sampling=_sampling(c, logprobs),
        prompt=text,
        prompt_token_ids=ids,
        logprobs=logprobs,
    )


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ApiError(
                    422,
                    f"messages[{index}].content: only text parts are supported",
                    param="messages",
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(422, f"messages[{index}].content must be a string", param="messages")


def parse_chat(body: dict) -> ParsedRequest:
    c = _common(body, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(422, "messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(422, f"messages[{i}] must be an object with a role", param="messages")
        clean.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    want = body.get("logprobs", False)
    if not isinstance(want, bool) and want is not None:
        raise ApiError(422, "logprobs must be true or false", param="logprobs")
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise ApiError(422, "top_logprobs needs logprobs: true", param="top_logprobs")
    logprobs = (top or 0) if want else None
    return ParsedRequest(
        kind="chat",
        model=c["model"],
        stream=c["stream"],
        include_usage=c["include_usage"],
        max_tokens=c["max_tokens"],
        sampling=_sampling(c, logprobs),
        messages=tuple(clean),
        logprobs=logprobs,
    )


def resolve_max_tokens(parsed: ParsedRequest, prompt_len: int, max_model_len: int) -> int:
    """The requested budget capped to what fits in the context; chat defaults to
    the whole remaining context, completions to 16 (as OpenAI does)."""
    room = max(max_model_len - prompt_len, 0)
    if parsed.max_tokens is None:
        wanted = DEFAULT_COMPLETION_MAX_TOKENS if parsed.kind == "completion" else room
    else:
        wanted = parsed.max_tokens
    return min(wanted, room) if room else wanted
