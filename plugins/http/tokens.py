"""``POST /tokenize`` and ``POST /detokenize``: the served model's tokenizer, over HTTP.

vLLM's routes and shapes, so clients that count tokens before they send a prompt (to fit
a context, to budget a batch) work unchanged: a prompt is tokenized as
``/v1/completions`` would, messages as ``/v1/chat/completions`` would. Tokenizing runs
off the event loop, like a generation request's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rt.core.errors import RequestError
from rt.plugins.http.bodies import DetokenizeBody, TokenizeBody
from rt.plugins.http.errors import ApiError
from rt.plugins.http.fields import load
from rt.plugins.http.openai_api import message_dicts


def parse_tokenize(data: dict[str, Any]) -> TokenizeBody:
    body: TokenizeBody = load(TokenizeBody, data)
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(422, "give either prompt or messages (one of them)", param="prompt")
    return body


def parse_detokenize(data: dict[str, Any]) -> DetokenizeBody:
    return load(DetokenizeBody, data)


def _token_ids(engine: Any, body: TokenizeBody) -> list[int]:
    if body.messages is not None:
        text = engine.apply_chat_template(
            message_dicts(body.messages), add_generation_prompt=body.add_generation_prompt
        )
        special = False if body.add_special_tokens is None else body.add_special_tokens
        return engine.encode(text, special)
    special = True if body.add_special_tokens is None else body.add_special_tokens
    return engine.encode(body.prompt, special)


async def tokenize(engine: Any, body: TokenizeBody) -> dict[str, Any]:
    try:
        ids = await asyncio.to_thread(_token_ids, engine, body)
    except Exception as e:  # a template that rejects the messages, say
        raise ApiError(422, f"could not build the prompt: {type(e).__name__}: {e}") from None
    return {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids}


async def detokenize(engine: Any, body: DetokenizeBody) -> dict[str, Any]:
    try:
        text = await asyncio.to_thread(engine.decode, body.tokens)
    except RequestError as e:
        raise ApiError(422, str(e), param="tokens") from None
    return {"prompt": text}
