"""Penalties and logit_bias through the whole engine: each greedy token is the argmax of
the model's logits less OpenAI's penalties, and preemption does not change them."""

from __future__ import annotations

import threading

from rt.core.engine import GenerationRequest
from rt.core.step import SamplingParams

from tests.engine_e2e.engine_helpers import generate, start_runtime
from tests.engine_e2e.test_batching import BLOCK_BYTES, _prompts

PENALIZED = SamplingParams(
    temperature=0.0,
    max_tokens=20,
    ignore_eos=True,
    presence_penalty=0.75,
    frequency_penalty=1.5,
    logprobs=20,
    want_logprobs=True,
)


def test_each_greedy_token_is_the_argmax_after_the_penalties(engine):
    prompt = (5, 6, 7)
    out = generate(engine, prompt, PENALIZED)
    plain = generate(
        engine, prompt, SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    )
    assert out.token_ids != plain.token_ids, "the penalties changed nothing: a weak test"
    seen: dict[int, int] = {}
    for lp in out.logprobs:
        # logprobs are the model's own (raw); the choice was made on the penalised logits
        def score(token: int, logprob: float) -> float:
            n = seen.get(token, 0)
            return logprob - 1.5 * n - 0.75 * (n > 0)

        best = max(score(t, v) for t, _, v in lp.top)
        assert score(lp.token_id, lp.logprob) >= best - 1e-4, (lp, seen)
        seen[lp.token_id] = seen.get(lp.token_id, 0) + 1


def test_logit_bias_forces_and_bans_tokens(engine):
    force = SamplingParams(temperature=0.7, max_tokens=6, ignore_eos=True, logit_bias=((42, 100),))
    assert generate(engine, (1, 2), force).token_ids == (42,) * 6
    greedy = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    first = generate(engine, (1, 2), greedy).token_ids[0]
    banned = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True,
                            logit_bias=((first, -100),))  # fmt: skip
    assert first not in generate(engine, (1, 2), banned).token_ids


def test_preemption_keeps_penalized_outputs_the_same(tiny_llama, engine):
    prompts = _prompts()
    repeated = SamplingParams(
        temperature=0.0, max_tokens=20, ignore_eos=True, repetition_penalty=1.8
    )
    plain = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    params = [PENALIZED, repeated, plain, PENALIZED, repeated, plain, repeated, plain]
    alone = [
        generate(engine, p, sp, f"a{i}").token_ids
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True))
    ]
    runtime = start_runtime(tiny_llama, ("cache.memory", str(6 * BLOCK_BYTES)))
    try:
        tight = runtime.services["engine"]
        results: dict[str, list[int]] = {}
        done = threading.Event()

        def collect(out):
            results.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished and len([k for k in results if len(results[k]) == 20]) == 8:
                done.set()

        for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
            tight.submit(
                GenerationRequest(f"t{i}", prompt_token_ids=tuple(p), sampling=sp), collect
            )
        assert done.wait(120)
        assert tight.stats().preemptions > 0, "the budget was not tight: a weak test"
        assert [tuple(results[f"t{i}"]) for i in range(8)] == alone
    finally:
        runtime.shutdown()
