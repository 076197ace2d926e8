"""vLLM's /tokenize and /detokenize on a real server: the token ids a generation request
would run, and their text back."""

from __future__ import annotations

import httpx
import pytest

from tests.http.conftest import assert_error_body

MESSAGES = [{"role": "user", "content": "Hello world! How are you today?"}]


def test_tokenize_counts_what_completions_and_chat_run(server, client, model):
    r = httpx.post(server + "/tokenize", json={"prompt": "The quick brown fox"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0 and body["max_model_len"] == 256
    ran = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=1)
    assert ran.usage.prompt_tokens == body["count"]
    chat = httpx.post(server + "/tokenize", json={"model": model, "messages": MESSAGES}).json()
    answered = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert answered.usage.prompt_tokens == chat["count"]
    bare = {"messages": MESSAGES, "add_generation_prompt": False}
    assert httpx.post(server + "/tokenize", json=bare).json()["count"] < chat["count"]


def test_detokenize_gives_the_text_back(server):
    ids = httpx.post(server + "/tokenize", json={"prompt": "The quick brown fox"}).json()
    r = httpx.post(server + "/detokenize", json={"tokens": ids["tokens"]})
    assert r.status_code == 200 and r.json() == {"prompt": "The quick brown fox"}
    assert httpx.post(server + "/detokenize", json={"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {}, 422, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, 422, "prompt"),
        ("/tokenize", {"prompt": 5}, 422, "prompt"),
        ("/tokenize", {"prompt": "a", "model": "other"}, 404, "model"),
        ("/detokenize", {"tokens": [1, -1]}, 422, "tokens"),
        ("/detokenize", {"tokens": [10**6]}, 422, "tokens"),  # past the vocabulary
        ("/detokenize", {}, 422, "tokens"),
    ],
)
def test_bad_bodies_get_an_openai_error_naming_the_field(server, path, body, status, param):
    error = assert_error_body(httpx.post(server + path, json=body), status)
    assert error["param"] == param
