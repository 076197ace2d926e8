"""The ``Engine`` protocol: what a frontend (HTTP, ``rt generate``) calls.

The built-in TP engine implements it and publishes itself as
``runtime.services["engine"]`` once warm; a frontend never imports the engine's
plugin, only these records. Outputs arrive through a callback on the engine's own
thread, so an asyncio frontend hands them to its loop with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
from rt.core.step import SamplingParams


@attrs.frozen
class TokenLogprob:
    """A token's logprob and the top alternatives (OpenAI ``logprobs``); ``logprob`` is
    None only for a prompt's first token, which nothing precedes."""

    token_id: int
    token: str
    logprob: float | None
    top: tuple[tuple[int, str, float], ...] = ()


@attrs.frozen
class GenerationRequest:
    """One request: either ``prompt`` text or ``prompt_token_ids``."""

    request_id: str
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    sampling: SamplingParams = SamplingParams()


@attrs.frozen
class GenerationOutput:
    """An incremental output: the new text and tokens since the previous one.

    ``finish_reason`` is set on the last output ("stop", "length", "abort" or
    "error"); ``error`` carries the message when the engine failed the request.
    ``prompt_logprobs``, on the first output of a request whose sampling params ask
    for them, holds one entry per prompt token: each token's logprob given the tokens
    before it (None for the first).
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@attrs.frozen
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_free: int
    preemptions: int = 0


OutputCallback = Callable[[GenerationOutput], None]


@runtime_checkable
class Engine(Protocol):
    """A running engine. All methods are thread-safe.

    ``dead_reason`` is None while the engine serves. Once it died on its own (a rank
    died, a step failed) it holds why, in one line fit for a client, and the engine
    never serves again: a frontend reports itself not ready and the server exits so
    that a supervisor restarts it. A requested ``shutdown()`` leaves it None.
    """

    model_name: str
    max_model_len: int
    dead_reason: str | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; encode a rendered chat template with
        ``add_special_tokens=False`` (the template writes them)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``, special tokens included (an echoed prompt); raise
        ``RequestError`` for an id outside the vocabulary."""
        ...

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True
    ) -> str: ...

    def submit(self, request: GenerationRequest, on_output: OutputCallback) -> None:
        """Queue a request; raise ``RequestError`` if it can never be served."""
        ...

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its KV blocks (a client went away)."""
        ...

    def stats(self) -> EngineStats: ...

    def shutdown(self) -> None: ...


def engine_death(runtime: Any) -> str | None:
    """Why the engine published on ``runtime`` died (one line), or None while it serves
    or before there is one."""
    engine = runtime.services.get("engine") if runtime.ready.is_set() else None
    return getattr(engine, "dead_reason", None)


def generate_blocking(
    engine: Engine, request: GenerationRequest, timeout: float | None = None
) -> GenerationOutput:
    """Submit and wait; the merged output of the whole request.

    Raises ``TimeoutError`` after ``timeout`` seconds (the request is aborted).
    """
    done = threading.Event()
    parts: list[GenerationOutput] = []

    def collect(output: GenerationOutput) -> None:
        parts.append(output)
        if output.finished:
            done.set()

    engine.submit(request, collect)
    if not done.wait(timeout):
        engine.abort(request.request_id)
        raise TimeoutError(f"request {request.request_id} did not finish in {timeout}s")
    return merge_outputs(parts)


def merge_outputs(parts: Sequence[GenerationOutput]) -> GenerationOutput:
    """One output holding the text, tokens and logprobs of a request's incremental ones."""
    return attrs.evolve(
        parts[-1],
        text="".join(p.text for p in parts),
        token_ids=tuple(t for p in parts for t in p.token_ids),
        logprobs=tuple(lp for p in parts for lp in p.logprobs),
        prompt_logprobs=next(
            (p.prompt_logprobs for p in parts if p.prompt_logprobs is not None), None
        ),
    )
