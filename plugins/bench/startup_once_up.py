"""What ``rt bench startup`` measures of a server once it answered its first completion.

- decode tokens/s: one greedy stream of ``decode_tokens`` tokens, timed from its
  first streamed token to its last, so prefill is not in the rate;
- with a switch timeout (compile mode ``background``): the seconds from launch until
  ``/metrics`` shows ``rt_compiled 1`` (sending a 1-token request every
  ``SWITCH_POLL_S``: the server switches before a step), then decode tokens/s again
  on the compiled step;
- the compile stage's seconds: ``rt_compile_seconds`` from ``/metrics``, else the
  ``compile`` stage span of rank 0 when it ran; ``None`` when neither has it.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from rt.core import RtError

# While waiting for the switch to the compiled step: a server switches before a step, so
# an idle one never does; every SWITCH_POLL_S the bench reads /metrics and, not yet
# switched, sends a 1-token completion, as light traffic would.
SWITCH_POLL_S = 0.5
TIMEOUT_S = 600
DECODE_PROMPT = "Once upon a time"


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(port: int, path: str, body: dict) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def metric(text: str, name: str) -> float | None:
    """The value of gauge ``name`` in Prometheus text, the lowest of its samples when it
    has labels (one per rank: switched means every rank switched); ``None`` if absent.

    Example: ``metric("rt_compiled 1.0\\n", "rt_compiled") == 1.0``."""
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return min(values) if values else None


def decode_rate(port: int, model_id: str, tokens: int) -> dict[str, Any]:
    """One greedy stream of ``tokens`` tokens: decode tokens/s from its first streamed
    token to its last, and the tokens produced (``usage``). ``ignore_eos`` is asked for
    (servers that lack it ignore it); the rate divides what was produced either way."""
    import httpx

    body = {
        "model": model_id,
        "prompt": DECODE_PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = last = None
    produced = None
    url = f"http://127.0.0.1:{port}/v1/completions"
    with httpx.stream("POST", url, json=body, timeout=TIMEOUT_S, trust_env=False) as r:
        if r.status_code != 200:
            raise RtError(f"the decode stream failed with HTTP {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                raise RtError(f"the decode stream failed: {event['error']}")
            if event.get("choices"):
                last = time.perf_counter()
                first = first or last
            if event.get("usage"):
                produced = event["usage"]["completion_tokens"]
    if produced is None or first is None or last is None:
        raise RtError("the decode stream carried no tokens or no usage chunk")
    rate = (produced - 1) / (last - first) if produced > 1 and last > first else None
    return {"tok_s": None if rate is None else round(rate, 1), "tokens": produced}


def wait_for_switch(
    port: int, proc: subprocess.Popen, start: float, timeout: float, model_id: str
) -> tuple[float | None, str | None]:
    """Seconds from launch until ``/metrics`` shows ``rt_compiled 1``, or ``None`` and why
    not: no such gauge (nothing compiles in the background), or not within ``timeout``.
    The server switches before a step, so each poll that finds it not yet switched
    gives it one (a 1-token completion): the switch is seen within ``SWITCH_POLL_S``
    of the first step after the compile ended."""
    deadline = time.perf_counter() + timeout
    nudge = {"model": model_id, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    while True:
        if proc.poll() is not None:
            raise RtError(f"rt serve exited with code {proc.returncode} before the switch")
        compiled = metric(get(port, "/metrics")[1].decode(), "rt_compiled")
        if compiled is None:
            return None, "no rt_compiled gauge in /metrics: no plugin compiles in the background"
        if compiled >= 1:
            return round(time.perf_counter() - start, 4), None
        if time.perf_counter() > deadline:
            return None, f"rt_compiled still 0 after {timeout:g} s (--switch-timeout)"
        status, body = post(port, "/v1/completions", nudge)
        if status != 200:
            raise RtError(f"a request while waiting for the switch failed with HTTP {status}")
        time.sleep(SWITCH_POLL_S)


def stage_durations(timeline: dict[str, Any]) -> dict[str, float]:
    return {
        s["stage"]: s["duration_s"]
        for s in timeline["spans"]
        if s["kind"] == "stage" and s["rank"] == 0
    }


def compile_seconds(timeline: dict[str, Any], metrics: str) -> float | None:
    """``rt_compile_seconds`` when the server reports it, else rank 0's ``compile`` stage
    span when it ran (a skipped stage compiled nothing)."""
    reported = metric(metrics, "rt_compile_seconds")
    if reported:
        return round(reported, 4)
    span = _compile_stage(timeline)
    if span is not None and span["outcome"] == "ok" and span["duration_s"] is not None:
        return round(span["duration_s"], 4)
    return None


def _compile_stage(timeline: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0's ``compile`` stage span in ``/startup`` JSON, if the graph has the stage."""
    return next(
        (
            s
            for s in timeline["spans"]
            if s["kind"] == "stage" and s["rank"] == 0 and s["stage"] == "compile"
        ),
        None,
    )


def once_up(
    port: int, proc: subprocess.Popen, start: float, decode_tokens: int, switch: float | None
) -> dict[str, Any]:
    """What is measured after the first completion (see the module docstring)."""
    out: dict[str, Any] = {}
    model_id = json.loads(get(port, "/v1/models")[1])["data"][0]["id"]
    if decode_tokens:
        d = decode_rate(port, model_id, decode_tokens)
        out.update(decode_tok_s=d["tok_s"], decode_tokens=d["tokens"])
    if switch is not None:
        compile_span = _compile_stage(json.loads(get(port, "/startup")[1]))
        if compile_span is not None and compile_span["outcome"] != "ok":
            # no compile runs, so no switch will come: say why instead of waiting
            out["switch_s"] = None
            out["switch_note"] = (
                f"compile stage {compile_span['outcome']}: {compile_span['reason']}"
            )
        else:
            waited = wait_for_switch(port, proc, start, switch, model_id)
            out["switch_s"], out["switch_note"] = waited
        if out["switch_s"] is not None and decode_tokens:
            d = decode_rate(port, model_id, decode_tokens)
            out.update(decode_tok_s_after=d["tok_s"], decode_tokens_after=d["tokens"])
    timeline = json.loads(get(port, "/startup")[1])  # again: a background compile ended
    out["stages"] = stage_durations(timeline)
    out["compile_s"] = compile_seconds(timeline, get(port, "/metrics")[1].decode())
    return out
