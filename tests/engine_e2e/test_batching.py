"""Batching is invisible: together or alone, tight KV budget or not, the same tokens."""

from __future__ import annotations

import random
import threading

import pytest
from rt.core.engine import GenerationRequest, generate_blocking
from rt.core.errors import RequestError
from rt.core.step import SamplingParams

from tests.engine_e2e.engine_helpers import start_runtime
from tests.serving_models import VOCAB_SIZE

# One KV block of the tiny Llama: K and V x 2 layers x 16 tokens x 2 KV heads x 16 dims x 4 bytes.
BLOCK_BYTES = 2 * 2 * 16 * 2 * 16 * 4


def _prompts() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(VOCAB_SIZE - 3) for _ in range(n)] for n in (3, 17, 5, 30, 1, 12, 8, 21)]


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def _run_together(engine, prompts, max_tokens, probe=None):
    results: dict[str, list] = {}
    done = threading.Event()
    lock = threading.Lock()

    def collect(out):
        if probe is not None:
            probe()
        with lock:
            results.setdefault(out.request_id, []).append(out)
            if sum(1 for parts in results.values() if parts[-1].finished) == len(prompts):
                done.set()

    for i, prompt in enumerate(prompts):
        engine.submit(
            GenerationRequest(
                f"r{i}", prompt_token_ids=tuple(prompt), sampling=_greedy(max_tokens)
            ),
            collect,
        )
    assert done.wait(120)
    return [[t for part in results[f"r{i}"] for t in part.token_ids] for i in range(len(prompts))]


def _alone(engine, prompts, max_tokens):
    return [
        list(
            generate_blocking(
                engine,
                GenerationRequest(f"a{i}", prompt_token_ids=tuple(p), sampling=_greedy(max_tokens)),
                60,
            ).token_ids
        )
        for i, p in enumerate(prompts)
    ]


@pytest.fixture(scope="module")
def roomy(tiny_llama):
    runtime = start_runtime(tiny_llama)
    yield runtime.services["engine"]
    runtime.shutdown()


def test_eight_requests_together_equal_each_alone(roomy):
    prompts = _prompts()
    alone = _alone(roomy, prompts, 24)
    assert _run_together(roomy, prompts, 24) == alone
    assert all(len(t) == 24 for t in alone)


def test_tight_kv_budget_still_completes_every_request_correctly(tiny_llama, roomy):
    prompts = _prompts()
    expected = _alone(roomy, prompts, 24)
    # 6 blocks = 96 tokens; together the 8 requests need 8 x up to 4 blocks.
    runtime = start_runtime(tiny_llama, ("cache.memory", str(6 * BLOCK_BYTES)))
    try:
        engine = runtime.services["engine"]
        assert engine.stats().kv_blocks_free == 6
        seen = []
        assert (
            _run_together(engine, prompts, 24, probe=lambda: seen.append(engine.stats()))
            == expected
        )
        # The budget really was short: requests queued or were preempted on the way.
        assert max(s.waiting for s in seen) > 0 or seen[-1].preemptions > 0
        assert engine.stats().kv_blocks_free == 6, "every block came back"
        with pytest.raises(RequestError, match=r"KV cache"):
            engine.submit(
                GenerationRequest("huge", prompt_token_ids=tuple(range(100)), sampling=_greedy(8)),
                print,
            )
    finally:
        runtime.shutdown()


def test_prompt_longer_than_context_is_rejected(roomy):
    with pytest.raises(RequestError, match=r"max_model_len"):
        roomy.submit(
            GenerationRequest("long", prompt_token_ids=(1,) * 300, sampling=_greedy(4)), print
        )


def test_abort_frees_blocks_at_once(roomy):
    free_before = roomy.stats().kv_blocks_free
    started = threading.Event()
    outputs = []

    def collect(out):
        outputs.append(out)
        started.set()

    roomy.submit(
        GenerationRequest("to-abort", prompt_token_ids=(5,) * 40, sampling=_greedy(200)), collect
    )
    assert started.wait(30)
    roomy.abort("to-abort")
    assert roomy.stats().kv_blocks_free == free_before
    assert outputs[-1].finish_reason == "abort"


def test_seeded_sampling_is_reproducible(roomy):
    params = SamplingParams(
        temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=16, ignore_eos=True
    )
    runs = [
        generate_blocking(
            roomy, GenerationRequest(f"s{i}", prompt_token_ids=(1, 2, 3), sampling=params), 60
        ).token_ids
        for i in range(2)
    ]
    assert runs[0] == runs[1]


def test_stop_string_and_logprobs(roomy):
    first = generate_blocking(
        roomy, GenerationRequest("base", prompt="Hello", sampling=_greedy(12)), 60
    )
    assert len(first.text) > 2
    stop = first.text[2:4]
    params = SamplingParams(
        temperature=0.0,
        max_tokens=12,
        ignore_eos=True,
        stop=(stop,),
        logprobs=3,
        want_logprobs=True,
    )
    out = generate_blocking(
        roomy, GenerationRequest("stopped", prompt="Hello", sampling=params), 60
    )
    assert out.finish_reason == "stop"
    assert out.text == first.text[: first.text.index(stop)]
    assert all(len(lp.top) == 3 and lp.top[0][2] >= lp.top[-1][2] for lp in out.logprobs)
