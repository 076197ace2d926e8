"""The clients of ``rt bench serve``: chat requests over HTTP, streaming or not, some of
them abandoned by their client on purpose.

Each client is a closed loop: it sends a request, waits for the end (or leaves), and
sends the next, until the deadline; without one it sends a single request. Requests
that stay are checked, not just timed: a stream must end with ``data: [DONE]`` and
carry no error event, a full response must be a 200 with a message and usage. A
client that leaves closes its connection mid-response, as a browser tab closing does:
a streaming one after a random number of events (0: right after the headers), a
non-streaming one after a random delay.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import attrs

PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
    "List three uses of a paperclip.",
    "Tell me a fun fact about octopuses.",
]
# A non-streaming client that leaves does so within this many seconds: well before a
# response under load ends, so most of them are cut mid-generation.
FULL_LEAVE_MAX_S = 0.5
REQUEST_TIMEOUT_S = 600.0


@attrs.frozen
class LoadPlan:
    concurrency: int
    max_tokens: int
    duration_s: float | None  # None: one request per client
    stream_share: float
    disconnect_share: float
    seed: int = 0


@attrs.frozen
class Outcome:
    """One request. ``status`` is "ok", "failed" or "disconnected" (left on purpose)."""

    status: str
    stream: bool
    start_s: float  # since the load began
    e2e_s: float
    ttft_s: float | None = None  # streams only: time to the first content
    tokens: int = 0  # completion tokens the server reported (requests that stayed)
    error: str | None = None
    client: int = 0


def first_round_end_s(outcomes: list[Outcome]) -> float:
    """When every client's first request had ended (since the load began): until then
    the server is still filling up to the full concurrency."""
    first: dict[int, tuple[float, float]] = {}  # client -> its first request's start, end
    for o in outcomes:
        if o.client not in first or o.start_s < first[o.client][0]:
            first[o.client] = (o.start_s, o.start_s + o.e2e_s)
    return max((end for _, end in first.values()), default=0.0)


def _body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def _stream(client: Any, url: str, body: dict, leave_after: int | None, t0: float) -> dict:
    """Read one SSE response; ``leave_after`` events then close (None: read to the end)."""
    ttft, tokens, events, done = None, None, 0, False
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        if leave_after == 0:
            return {"left": True}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return {"error": f"error event: {data['error'].get('message')}"}
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            elif ttft is None and data["choices"] and data["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
            events += 1
            if leave_after is not None and events >= leave_after:
                return {"left": True}  # leaving the block closes the connection unread
    if not done:
        return {"error": "the stream ended without data: [DONE]"}
    if tokens is None:
        return {"error": "the stream carried no usage chunk"}
    return {"ttft": ttft, "tokens": tokens}


async def _full(client: Any, url: str, body: dict, leave_after_s: float | None) -> dict:
    call = client.post(url + "/v1/chat/completions", json=body)
    if leave_after_s is None:
        r = await call
    else:
        try:
            r = await asyncio.wait_for(call, leave_after_s)
        except TimeoutError:
            return {"left": True}  # the cancelled request's connection is closed
    if r.status_code != 200:
        return {"error": f"HTTP {r.status_code}: {r.content[:200]!r}"}
    data = r.json()
    message = data["choices"][0]["message"]
    if not isinstance(message.get("content"), str) or not data["choices"][0].get("finish_reason"):
        return {"error": f"malformed response: {str(data)[:200]}"}
    return {"tokens": data["usage"]["completion_tokens"]}


async def one_request(
    client: Any, url: str, model: str, plan: LoadPlan, rng: random.Random, began: float
) -> Outcome:
    stream = rng.random() < plan.stream_share
    leave = rng.random() < plan.disconnect_share
    body = _body(model, rng.choice(PROMPTS), plan.max_tokens, stream)
    t0 = time.perf_counter()
    try:
        if stream:
            after = rng.randint(0, max(1, plan.max_tokens // 2)) if leave else None
            got = await _stream(client, url, body, after, t0)
        else:
            got = await _full(
                client, url, body, rng.uniform(0.0, FULL_LEAVE_MAX_S) if leave else None
            )
    except Exception as e:  # a benchmark reports failures, it does not stop on them
        got = {"error": f"{type(e).__name__}: {e}"}
    e2e = time.perf_counter() - t0
    status = "disconnected" if got.get("left") else ("failed" if "error" in got else "ok")
    return Outcome(
        status=status,
        stream=stream,
        start_s=t0 - began,
        e2e_s=e2e,
        ttft_s=got.get("ttft"),
        tokens=got.get("tokens") or 0,
        error=got.get("error"),
    )


async def _client(
    index: int, client: Any, url: str, model: str, plan: LoadPlan, began: float
) -> list[Outcome]:
    rng = random.Random(plan.seed * 100_003 + index)  # each client's choices repeat per seed
    out = [await one_request(client, url, model, plan, rng, began)]
    while plan.duration_s is not None and time.perf_counter() - began < plan.duration_s:
        out.append(await one_request(client, url, model, plan, rng, began))
    return [attrs.evolve(o, client=index) for o in out]


async def run_load(url: str, model: str, plan: LoadPlan) -> tuple[list[Outcome], float]:
    """Every request's outcome and the wall time until the last one ended. Requests in
    flight at the deadline are let finish: cutting them would count as failures."""
    import httpx

    n = plan.concurrency
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        began = time.perf_counter()
        per_client = await asyncio.gather(
            *(_client(i, client, url, model, plan, began) for i in range(n))
        )
        wall = time.perf_counter() - began
    return [o for outs in per_client for o in outs], wall
