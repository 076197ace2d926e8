"""Completions with echo through the openai client against a real server: the prompt
before the text, and with logprobs its tokens scored (what lm-eval-harness asks for)."""

from __future__ import annotations

import httpx
import pytest
from rt.plugins.http import openapi

from tests.http.conftest import assert_error_body
from tests.http.test_observability import scrape, value

PROMPT = "The quick brown fox"


def test_echo_alone_scores_the_prompt_as_lm_eval_asks(client, model):
    # lm-eval-harness's loglikelihood request: echo, logprobs, greedy, max_tokens 0 or 1
    out = client.completions.create(
        model=model, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    (choice,) = out.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    lp = choice.logprobs
    n = out.usage.prompt_tokens
    assert out.usage.completion_tokens == 0
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n > 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0.0 for v in lp.token_logprobs[1:])
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    assert "".join(lp.tokens) == PROMPT
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_echoed_logprobs_match_the_documented_response_schema(server):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    body = {"prompt": PROMPT, "echo": True, "logprobs": 2, "max_tokens": 3}
    response = httpx.post(server + "/v1/completions", json=body)
    assert response.status_code == 200, response.text
    schema = openapi.document()["components"]["schemas"]["Completion"]
    jsonschema_rs.validator_for(schema).validate(response.json())  # nulls included


def test_echo_adds_the_prompt_before_the_same_completion_logprobs(client, model):
    # (tests/engine_e2e/test_prompt_logprobs.py checks the prompt's values by token id)
    plain = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2
    )
    echoed = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    made, both = plain.choices[0].logprobs, echoed.choices[0].logprobs
    n = echoed.usage.prompt_tokens
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert both.tokens == both.tokens[:n] + made.tokens and len(both.tokens) == n + 6
    assert both.token_logprobs[n:] == pytest.approx(made.token_logprobs, abs=1e-5)
    assert both.text_offset[n:] == [len(PROMPT) + o for o in made.text_offset]


def test_echo_without_logprobs_puts_the_prompt_before_the_text(client, model):
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, echo=True
    )
    assert out.choices[0].text == PROMPT + plain.choices[0].text
    assert out.choices[0].logprobs is None
    assert out.usage == plain.usage


def test_echo_of_token_ids_and_with_several_choices(client, model):
    ids = client.completions.create(
        model=model, prompt=PROMPT, echo=True, logprobs=0, max_tokens=0
    ).choices[0]
    n_prompt = len(ids.logprobs.tokens)
    out = client.completions.create(
        model=model, prompt=[[1, 2, 3, 4]], echo=True, logprobs=0, max_tokens=3, n=2,
        temperature=0,
    )  # fmt: skip
    assert n_prompt > 0 and [c.index for c in out.choices] == [0, 1]
    for choice in out.choices:
        assert len(choice.logprobs.tokens) == 4 + 3
        assert choice.logprobs.token_logprobs[0] is None
        assert choice.text == "".join(choice.logprobs.tokens)
    assert out.choices[0].logprobs == out.choices[1].logprobs  # greedy: the same


def test_streamed_echo_sends_the_prompt_first(client, model):
    full = client.completions.create(
        model=model, prompt=PROMPT, echo=True, logprobs=1, max_tokens=5, temperature=0
    ).choices[0]
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, echo=True, logprobs=1, max_tokens=5, temperature=0,
            stream=True,
        )
    )  # fmt: skip
    first = chunks[0].choices[0]
    assert first.text == PROMPT and first.logprobs.token_logprobs[0] is None
    assert "".join(c.choices[0].text for c in chunks) == full.text
    tokens = [t for c in chunks for t in c.choices[0].logprobs.tokens]
    assert tokens == full.logprobs.tokens
    n = len(first.logprobs.tokens)
    assert first.logprobs.text_offset == full.logprobs.text_offset[:n]
    assert chunks[1].choices[0].logprobs.text_offset[0] == len(PROMPT)
    alone = list(
        client.completions.create(model=model, prompt=PROMPT, echo=True, max_tokens=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in alone) == PROMPT
    assert alone[-1].choices[0].finish_reason == "length"


def test_an_echoed_token_id_past_the_vocabulary_is_422(server):
    # (schemathesis found it: the echo's text was made before the engine checked the ids)
    body = {"prompt": [5, 10**6], "echo": True, "max_tokens": 1}
    error = assert_error_body(httpx.post(server + "/v1/completions", json=body), 422)
    assert error["param"] == "prompt" and "token ids" in error["message"]


def test_max_tokens_zero_needs_echo(server):
    r = httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 0})
    error = assert_error_body(r, 422)
    assert error["param"] == "max_tokens" and "echo" in error["message"]


def test_a_batch_of_prompts_gets_n_choices_each_in_prompt_order(client, model):
    prompts = [PROMPT, "Hello", [5, 6, 7]]
    alone = [
        client.completions.create(model=model, prompt=p, max_tokens=6, temperature=0)
        for p in prompts
    ]
    out = client.completions.create(model=model, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in out.choices] == list(range(6))
    assert [c.text for c in out.choices] == [a.choices[0].text for a in alone for _ in (0, 1)]
    # each prompt counted once, every choice's completion
    assert out.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert out.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)


def test_a_batch_scored_with_echo_streams_each_prompt_first(client, model):
    # lm-eval-harness sends its loglikelihood requests in batches of token ids
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    full = client.completions.create(
        model=model, prompt=prompts, echo=True, logprobs=1, max_tokens=0, temperature=0
    )
    assert [len(c.logprobs.tokens) for c in full.choices] == [5, 3]
    assert full.usage.prompt_tokens == 8 and full.usage.completion_tokens == 0
    chunks = list(
        client.completions.create(
            model=model, prompt=prompts, echo=True, logprobs=1, max_tokens=0, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = ["", ""]
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
    assert texts == [c.text for c in full.choices]
    assert chunks[-1].usage.prompt_tokens == 8


def test_a_batch_past_the_limits_is_refused_whole(server, client, model):
    too_many = httpx.post(
        server + "/v1/completions", json={"prompt": ["a"] * 200, "n": 2, "max_tokens": 1}
    )
    error = assert_error_body(too_many, 422)
    assert error["param"] == "n" and "400 choices" in error["message"]
    long = "word " * 5000  # past the tiny model's context
    refused = httpx.post(server + "/v1/completions", json={"prompt": ["hi", long]})
    assert_error_body(refused, 400, code="context_length_exceeded")
    # the engine refuses the second prompt (a token id past the vocabulary) after it took
    # the first: the first is withdrawn, nothing is left running or admitted
    before = scrape(server)
    body = {"prompt": [[1, 2, 3], [10**6]], "max_tokens": 200, "ignore_eos": True}
    error = assert_error_body(httpx.post(server + "/v1/completions", json=body), 422)
    assert "prompt token ids" in error["message"]
    now = scrape(server)
    aborted = value(now, "rt_requests_finished_total", finish_reason="abort")
    assert aborted == value(before, "rt_requests_finished_total", finish_reason="abort") + 1
    assert value(now, "rt_num_requests_running") == value(now, "rt_requests_admitted") == 0
    ok = client.completions.create(model=model, prompt="hi", max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
