"""The OpenAI API through the official ``openai`` client, against a real server."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.http.conftest import assert_error_body

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]


def test_models_lists_the_served_model(client, tiny_model):
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_model.name]
    assert models[0].object == "model"


def test_completion_streamed_text_equals_non_streamed(client, model):
    full = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    choice = full.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.completion_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    chunks = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_chat_streamed_text_equals_non_streamed_with_usage(client, model):
    full = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=24, temperature=0
    )
    message = full.choices[0].message
    assert message.role == "assistant"
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_max_tokens_length_and_chat_max_completion_tokens(client, model):
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=3, temperature=0)
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 3
    chat = client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=2, temperature=0
    )
    assert chat.usage.completion_tokens <= 2


def test_completions_default_to_16_tokens(client, model):
    out = client.completions.create(model=model, prompt=PROMPT, temperature=0)
    assert out.usage.completion_tokens <= 16


def test_stop_string_ends_the_text_before_it(client, model):
    text = (
        client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
        .choices[0]
        .text
    )
    stop = text[len(text) // 2 :][:2]
    assert stop.strip(), f"need a visible stop string in {text!r}"
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].text == text[: text.index(stop)]


def test_seed_makes_sampling_reproducible(client, model):
    def sample() -> str:
        return (
            client.completions.create(
                model=model, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=7
            )
            .choices[0]
            .text
        )

    assert sample() == sample()


def test_logprobs_in_openai_shapes(client, model):
    out = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2
    )
    lp = out.choices[0].logprobs
    n = out.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0
    chat = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "hi", "temperature": -0.5}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "n": 17}, "n"),
        ({"prompt": {"not": "a prompt"}}, "prompt"),
    ],
    ids=["negative-max-tokens", "negative-temperature", "top-p-zero", "n-17", "bad"],
)
def test_out_of_range_values_are_422(server, body, param):
    error = assert_error_body(httpx.post(server + "/v1/completions", json=body), 422)
    assert error["param"] == param


def test_chat_without_messages_is_422(server):
    r = httpx.post(server + "/v1/chat/completions", json={"messages": []})
    assert assert_error_body(r, 422)["param"] == "messages"


def test_malformed_json_is_400(server):
    r = httpx.post(
        server + "/v1/completions",
        content=b'{"prompt": ',
        headers={"content-type": "application/json"},
    )
    assert_error_body(r, 400)


def test_unknown_model_is_404_model_not_found(client, server):
    r = httpx.post(server + "/v1/completions", json={"model": "gpt-9", "prompt": "hi"})
    assert_error_body(r, 404, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="hi")


def test_unknown_route_is_404(server):
    assert_error_body(httpx.get(server + "/v1/nothing-here"), 404)


def test_body_over_the_limit_is_413(server):
    body = b'{"prompt": "' + b"a" * (1024 * 1024 + 10) + b'"}'
    assert_error_body(httpx.post(server + "/v1/completions", content=body), 413)

    def chunks():  # no Content-Length: the limit holds while reading
        yield body[:1000]
        yield body[1000:]

    assert_error_body(httpx.post(server + "/v1/completions", content=chunks()), 413)


# -- hostile values and the context length ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"prompt": "hi", "temperature": NaN}', "temperature"),
        (b'{"prompt": "hi", "top_p": Infinity}', "top_p"),
        (b'{"prompt": "hi", "temperature": 1e400}', "temperature"),
        (b'{"prompt": "hi", "temperature": ' + b"9" * 400 + b"}", "temperature"),
        (b'{"prompt": "hi", "seed": ' + b"9" * 400 + b"}", "seed"),
        (b'{"prompt": "hi", "n": 100000000000000000000}', "n"),
        (b'{"prompt": "hi", "logprobs": 21}', "logprobs"),
        (b'{"prompt": "hi", "max_tokens": "5"}', "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": 2.5}', "max_tokens"),
        (b'{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        (b'{"prompt": "hi", "stop": [""]}', "stop"),
        (b'{"prompt": "hi", "stream_options": {"include_usage": "yes"}}', "stream_options"),
        (b'{"prompt": [[[[[[{"a": [1, {"b": null}]}]]]]]]}', "prompt"),
        (b'{"prompt": [1, -5]}', "prompt"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": "hi", "echo": "yes"}', "echo"),
        (b'{"prompt": "hi", "max_tokens": -1, "echo": true}', "max_tokens"),
        (b'{"prompt": "hi", "best_of": 2}', "best_of"),
        (b'{"prompt": "hi", "suffix": "end"}', "suffix"),
        (b'{"prompt": "hi", "presence_penalty": 2.5}', "presence_penalty"),
        (b'{"prompt": "hi", "frequency_penalty": -3}', "frequency_penalty"),
        (b'{"prompt": "hi", "logit_bias": {"abc": 1}}', "logit_bias"),
        (rb'{"prompt": "hi", "logit_bias": {"\u00b2": 1}}', "logit_bias"),
        (b'{"prompt": "hi", "logit_bias": {"1": 101}}', "logit_bias"),
        (b'{"prompt": "hi", "logit_bias": {"1": 1, "01": 2}}', "logit_bias"),
        (b'{"prompt": "hi", "logit_bias": {"99999": 1}}', "logit_bias"),  # past the vocabulary
        (b'{"prompt": "hi", "logit_bias": [1, 2]}', "logit_bias"),
        (b'{"prompt": "hi", "repetition_penalty": 0}', "repetition_penalty"),
        (b'{"prompt": "hi", "repetition_penalty": 5e-324}', "repetition_penalty"),
        (b'{"prompt": "hi", "repetition_penalty": 2.5}', "repetition_penalty"),
        (b'{"prompt": "hi", "min_p": 1.5}', "min_p"),
        (b'{"prompt": "hi", "top_k": -2}', "top_k"),
        (b'{"prompt": "hi", "stop_token_ids": [' + b"1," * 256 + b"1]}", "stop_token_ids"),
        (b'{"prompt": "hi", "ignore_eos": 1}', "ignore_eos"),
        (b'{"prompt": "hi", "top_k": 99999999999999999999}', "top_k"),
    ],
)
def test_hostile_values_are_422_with_an_openai_body(server, raw, param):
    r = httpx.post(server + "/v1/completions", content=raw)
    error = assert_error_body(r, 422)
    assert error["param"] == param and "\n" not in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
        {"messages": [{"content": "no role"}]},
        {"messages": "hi"},
        {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": -1},
    ],
)
def test_bad_chat_bodies_are_422(server, body):
    assert_error_body(httpx.post(server + "/v1/chat/completions", json=body), 422)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("functions", [{"name": "f"}]),
        ("function_call", {"name": "f"}),
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}),
    ],
)
def test_what_rt_cannot_honour_is_refused_not_ignored(server, field, value):
    # Served as plain text, such a request would look answered and be wrong.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    error = assert_error_body(httpx.post(server + "/v1/chat/completions", json=body), 422)
    assert error["param"] == field and "not supported" in error["message"]


def test_neutral_values_of_those_fields_are_served(client, model):
    out = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=2,
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_logit_bias_and_penalties_through_the_client(client, model):
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    forced = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0.9, logit_bias={"7": 100}, logprobs=0
    )
    assert len(set(forced.choices[0].logprobs.tokens)) == 1
    penalized = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, frequency_penalty=2,
        presence_penalty=2,
    )  # fmt: skip
    assert penalized.choices[0].text != plain.choices[0].text


def test_vllms_sampling_extras_through_the_client(client, model):
    # vLLM's clients send top_k, min_p and repetition_penalty in extra_body.
    def text(**extra) -> str:
        out = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, **extra)
        return out.choices[0].text

    greedy = text(temperature=0)
    # the one most likely token is all that either cut keeps: sampling is greedy
    assert text(temperature=1.0, extra_body={"top_k": 1}) == greedy
    assert text(temperature=1.0, extra_body={"min_p": 1.0}) == greedy
    assert text(temperature=0, extra_body={"repetition_penalty": 2.0}) != greedy
    assert text(temperature=0, extra_body={"top_k": -1, "repetition_penalty": 1}) == greedy


def test_ignore_eos_stop_token_ids_and_min_tokens(client, model, server):
    long = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    assert long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length"
    stopped = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=40, temperature=0, logit_bias={"7": 100},
        extra_body={"stop_token_ids": [7]},
    )  # fmt: skip
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].finish_reason == "stop"
    held = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=40, temperature=0, logit_bias={"7": 100},
        extra_body={"stop_token_ids": [7], "min_tokens": 5},
    )  # fmt: skip
    # token 7 cannot come before the sixth token, and ends the text as soon as it may
    assert held.usage.completion_tokens == 6 and held.choices[0].finish_reason == "stop"
    body = {"prompt": PROMPT, "max_tokens": 4, "min_tokens": 5}
    error = assert_error_body(httpx.post(server + "/v1/completions", json=body), 422)
    assert error["param"] == "min_tokens"


@pytest.mark.parametrize(
    ("route", "raw", "where"),
    [
        ("completions", rb'{"prompt": "hi \ud800 there"}', "prompt"),
        ("completions", rb'{"prompt": "hi", "stop": ["\udc00"]}', "stop[0]"),
        (
            "chat/completions",
            rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}',
            "messages[0].content[0].text",
        ),
        # json.loads lets a surrogate's UTF-8 bytes through, and a UTF-16 body's
        ("completions", b'{"prompt": "hi \xed\xa0\x80"}', "prompt"),
        ("completions", '{"prompt": "a\ud800"}'.encode("utf-16", "surrogatepass"), "prompt"),
        ("completions", '{"prompt": "a\udc00"}'.encode("utf-16-be", "surrogatepass"), "prompt"),
    ],
)
def test_a_lone_surrogate_is_400_naming_where(server, route, raw, where):
    # JSON may escape half of a UTF-16 pair; no tokenizer can take the string.
    error = assert_error_body(httpx.post(f"{server}/v1/{route}", content=raw), 400)
    assert error["message"].startswith(f"{where} is not valid Unicode: it holds the lone")
    assert error["param"] == where.split("[")[0]


def test_a_surrogate_pair_is_one_character(server):
    raw = rb'{"prompt": "fox \ud83e\udd8a", "max_tokens": 1}'
    r = httpx.post(server + "/v1/completions", content=raw)
    assert r.status_code == 200, r.text


def test_integral_floats_and_unicode_are_accepted(client, model):
    out = client.completions.create(
        model=model, prompt="café こんにちは 🦊", max_tokens=2.0, seed=7.0, temperature=0
    )
    assert out.usage.completion_tokens <= 2


def test_max_tokens_past_the_context_is_400_context_length_exceeded(client, model, server):
    max_model_len = client.models.list().data[0].model_extra["max_model_len"]
    body = {"prompt": PROMPT, "max_tokens": max_model_len}
    error = assert_error_body(
        httpx.post(server + "/v1/completions", json=body), 400, "context_length_exceeded"
    )
    assert error["param"] == "max_tokens"
    assert error["message"].startswith(f"This model's maximum context length is {max_model_len}")
    assert f"{max_model_len} in the completion" in error["message"]
    chat = {"messages": MESSAGES, "max_completion_tokens": 10**30}
    r = httpx.post(server + "/v1/chat/completions", json=chat)
    assert assert_error_body(r, 400, "context_length_exceeded")["param"] == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_model_len)


def test_a_prompt_that_fills_the_context_is_400_context_length_exceeded(server):
    long = httpx.post(server + "/v1/completions", json={"prompt": "hello world " * 200})
    assert assert_error_body(long, 400, "context_length_exceeded")["param"] == "prompt"
    r = httpx.post(
        server + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello world " * 200}]},
    )
    error = assert_error_body(r, 400, "context_length_exceeded")
    assert error["param"] == "messages" and "leaves no room" in error["message"]


def test_max_tokens_left_out_fills_the_rest_of_the_context(client, model):
    max_model_len = client.models.list().data[0].model_extra["max_model_len"]
    chat = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    assert chat.usage.total_tokens <= max_model_len
    if chat.choices[0].finish_reason == "length":
        assert chat.usage.total_tokens == max_model_len


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"max_tokens": ' + b"9" * 5000 + b"}"],
    ids=["nested-too-deeply", "integer-too-long"],
)
def test_json_python_cannot_read_is_400_not_500(server, body):
    r = httpx.post(
        server + "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_error_body(r, 400)["message"]


# -- several choices (n) -------------------------------------------------------------


def test_n_choices_each_generated_and_counted(client, model):
    greedy = client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0)
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0, n=3)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == [greedy.choices[0].text] * 3
    assert out.usage.prompt_tokens == greedy.usage.prompt_tokens
    assert out.usage.completion_tokens == 3 * greedy.usage.completion_tokens

    def seeded() -> list[str]:
        out = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=7, n=4
        )
        return [c.message.content for c in out.choices]

    first = seeded()
    assert seeded() == first, "a seeded request's choices are reproducible"
    assert len(set(first)) > 1, "and differ from each other (seed + index)"


def test_n_choices_stream_with_their_index(client, model):
    full = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=3, n=2
    )
    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=12, temperature=1.0, seed=3, n=2,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = ["", ""]
    roles, reasons = [0, 0], [None, None]
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        roles[choice.index] += choice.delta.role == "assistant"
        reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    assert texts == [c.message.content for c in full.choices]
    assert roles == [1, 1] and None not in reasons
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_models_retrieve_by_id_or_source(client, model, server, tiny_model):
    card = client.models.retrieve(model)
    assert card.id == model and card.object == "model"
    by_source = httpx.get(server + "/v1/models/" + str(tiny_model).lstrip("/"))
    # a source path holds slashes; the route takes them (here it lost its leading one)
    assert by_source.status_code == 404
    assert httpx.get(f"{server}/v1/models/{tiny_model}").json()["id"] == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    error = assert_error_body(httpx.get(server + "/v1/models/gpt-4"), 404, "model_not_found")
    assert error["param"] == "model"
