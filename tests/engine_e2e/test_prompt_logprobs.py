"""Prompt logprobs through the whole engine: the same values whether the prompt is
prefilled at once, in chunks beside other requests, or again after a preemption; and
they score the tokens the engine itself would put there."""

from __future__ import annotations

import threading

import attrs
import pytest
from rt.core.engine import GenerationRequest
from rt.core.step import SamplingParams

from tests.engine_e2e.engine_helpers import generate, start_runtime
from tests.engine_e2e.test_batching import BLOCK_BYTES, _prompts

SCORED = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, prompt_logprobs=2)


def _values(out) -> list[tuple[int, float | None, tuple]]:
    return [(lp.token_id, lp.logprob, tuple(t for t, _, _ in lp.top)) for lp in out.prompt_logprobs]


def test_prompt_logprobs_score_what_the_engine_generates(engine):
    prompt = [5, 6, 7, 8]
    greedy = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, want_logprobs=True)
    made = generate(engine, prompt, greedy)
    scored = generate(engine, prompt + list(made.token_ids), SCORED)
    lps = scored.prompt_logprobs
    assert len(lps) == len(prompt) + 6
    assert lps[0].token_id == 5 and lps[0].logprob is None and lps[0].top == ()
    assert [lp.token_id for lp in lps] == prompt + list(made.token_ids)
    for generated, echoed in zip(made.logprobs, lps[len(prompt) :], strict=True):
        # a greedy token is its position's most likely one, with the same logprob
        assert echoed.logprob == pytest.approx(generated.logprob, abs=1e-4)
        assert echoed.top[0][0] == echoed.token_id
        assert echoed.top[0][2] == pytest.approx(echoed.logprob, abs=1e-6)
    # the generated tokens are as without them
    unscored = attrs.evolve(SCORED, prompt_logprobs=None)
    plain = generate(engine, prompt + list(made.token_ids), unscored)
    assert plain.token_ids == scored.token_ids and plain.prompt_logprobs is None


def test_chunks_and_preemption_give_the_same_prompt_logprobs(tiny_llama, engine):
    prompts = _prompts()
    alone = [generate(engine, p, SCORED, f"a{i}") for i, p in enumerate(prompts)]
    # prompts of up to 30 tokens through steps of 16 tokens, and a cache of 6 blocks of 16
    # tokens for 8 requests: chunked prefill beside decodes, and preemptions
    runtime = start_runtime(
        tiny_llama,
        ("cache.memory", str(6 * BLOCK_BYTES)),
        ("scheduler.max_num_batched_tokens", "16"),
        ("scheduler.max_num_seqs", "8"),
    )
    try:
        tight = runtime.services["engine"]
        firsts, tokens, done = {}, {}, threading.Event()
        lock = threading.Lock()

        def collect(out):
            with lock:
                if out.prompt_logprobs is not None:
                    firsts[out.request_id] = out
                tokens.setdefault(out.request_id, []).extend(out.token_ids)
                if sum(len(t) == 20 for t in tokens.values()) == len(prompts):
                    done.set()

        for i, p in enumerate(prompts):
            request = GenerationRequest(f"t{i}", prompt_token_ids=tuple(p), sampling=SCORED)
            tight.submit(request, collect)
        assert done.wait(120)
        assert tight.stats().preemptions > 0, "the budget was not tight: a weak test"
        for i, want in enumerate(alone):
            got = firsts[f"t{i}"]
            assert tuple(tokens[f"t{i}"]) == want.token_ids
            assert len(got.prompt_logprobs) == len(prompts[i])
            for a, b in zip(_values(got), _values(want), strict=True):
                assert a[0] == b[0] and a[2][:1] == b[2][:1]
                assert a[1] == b[1] or a[1] == pytest.approx(b[1], abs=1e-4)
    finally:
        runtime.shutdown()
