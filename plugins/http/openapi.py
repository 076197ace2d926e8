"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

The request bodies come from the declarations in ``bodies.py`` (the ones that
validate requests), so the document cannot drift from what the server accepts. The
response shapes are written here once, after ``responses.py`` and ``errors.py``;
tests/http/test_schemathesis.py checks live responses against them.
"""

from __future__ import annotations

from typing import Any

from rt import __version__
from rt.plugins.http import bodies
from rt.plugins.http.fields import object_schema


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """A JSON object with these properties, the first group required."""
    return {
        "type": "object",
        "properties": {**required, **optional},
        "required": list(required),
    }


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


ERROR = _obj(
    {
        "error": _obj(
            {
                "message": STR,
                "type": STR,
                "param": _or_null(STR),
                "code": _or_null(STR),
            }
        )
    }
)
USAGE = _obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT})
FINISH = {"enum": ["stop", "length", None]}
COMPLETION_LOGPROBS = _obj(
    {
        "tokens": _list(STR),
        # an echoed prompt's first token: null (nothing precedes it)
        "token_logprobs": _list(_or_null(NUM)),
        "top_logprobs": _list(_or_null({"type": "object", "additionalProperties": NUM})),
        "text_offset": _list(INT),
    }
)
_TOKEN = {"token": STR, "logprob": NUM, "bytes": _list(INT)}
CHAT_LOGPROBS = _obj({"content": _list(_obj({**_TOKEN, "top_logprobs": _list(_obj(_TOKEN))}))})


def _response(obj: str, choice: dict[str, Any]) -> dict[str, Any]:
    return _obj(
        {
            "id": STR,
            "object": {"const": obj},
            "created": INT,
            "model": STR,
            "choices": _list(choice),
            "usage": USAGE,
        }
    )


COMPLETION = _response(
    "text_completion",
    _obj(
        {
            "index": INT,
            "text": STR,
            "logprobs": _or_null(COMPLETION_LOGPROBS),
            "finish_reason": FINISH,
        }
    ),
)
CHAT_COMPLETION = _response(
    "chat.completion",
    _obj(
        {
            "index": INT,
            "message": _obj({"role": {"const": "assistant"}, "content": STR}),
            "logprobs": _or_null(CHAT_LOGPROBS),
            "finish_reason": FINISH,
        }
    ),
)
MODEL = _obj(
    {
        "id": STR,
        "object": {"const": "model"},
        "created": INT,
        "owned_by": STR,
        "max_model_len": INT,
    }
)
MODEL_LIST = _obj({"object": {"const": "list"}, "data": _list(MODEL)})
READY = _obj({"status": STR}, running=_list(STR), pending=_list(STR), error=STR)
TOKENIZED = _obj({"count": INT, "max_model_len": INT, "tokens": _list(INT)})
DETOKENIZED = _obj({"prompt": STR})

_ERRORS = {
    "400": "The body is not a JSON object, or max_tokens does not fit in the context "
    "(code context_length_exceeded).",
    "401": "The API key is missing or wrong (code invalid_api_key).",
    "404": "An unknown model (code model_not_found).",
    "408": "The whole body did not arrive within server.body_timeout_s (code "
    "request_timeout); the connection is closed.",
    "413": "The body is larger than server.max_body_bytes.",
    "422": "A value out of range or of the wrong type; param names the field.",
    "429": "server.max_concurrent_requests generation requests are being served already "
    "(code too_many_requests, with Retry-After).",
    "503": "Not ready yet (with Retry-After), startup failed, shutting down, or the engine "
    "stopped.",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: _json({"$ref": "#/components/schemas/Error"}, _ERRORS[s]) for s in statuses}


def _generation(summary: str, body: str, response: str, secured: bool) -> dict[str, Any]:
    ok = _json({"$ref": f"#/components/schemas/{response}"}, "The whole response.")
    # A text/event-stream schema describes each event (data, event, id, retry).
    ok["content"]["text/event-stream"] = {
        "schema": {
            "type": "object",
            "description": (
                "With stream: true, one event per chunk: data is the chunk as JSON (or an "
                "OpenAI error body if the engine failed the request), then data: [DONE]."
            ),
            "properties": {
                "data": {"type": "string"},
                "event": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
            "required": ["data"],
        }
    }
    statuses = (
        ("400", "401", "404", "408", "413", "422", "429", "503")
        if secured
        else ("400", "404", "408", "413", "422", "429", "503")
    )
    operation = {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        },
        "responses": {"200": ok, **_errors(*statuses)},
    }
    return _secure(operation, secured)


def _secure(operation: dict[str, Any], secured: bool) -> dict[str, Any]:
    if secured:
        operation["security"] = [{"bearer": []}]
    return operation


def _tokens(summary: str, body: str, response: dict[str, Any], secured: bool) -> dict[str, Any]:
    statuses = ("400", "401", "404", "408", "413", "422", "503")
    operation = {
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        },
        "responses": {
            "200": _json(response, "The answer."),
            **_errors(*(s for s in statuses if secured or s != "401")),
        },
    }
    return {"post": _secure(operation, secured)}


def _plain(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": responses}}


def document(api_key: bool = False) -> dict[str, Any]:
    """The OpenAPI document; with ``api_key`` the ``/v1`` routes declare bearer auth."""
    models = {
        "summary": "The served model.",
        "responses": {
            "200": _json(MODEL_LIST, "The one served model."),
            **_errors(*(("401", "503") if api_key else ("503",))),
        },
    }
    one_model = {
        "summary": "The served model, by its id (or its source).",
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": STR}],
        "responses": {
            "200": _json(MODEL, "The served model."),
            **_errors(*(("401", "404", "503") if api_key else ("404", "503"))),
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "rt",
            "version": __version__,
            "description": "rt's OpenAI-compatible API; request bodies are generated from "
            "the declarations that validate them.",
        },
        "paths": {
            "/v1/completions": {
                "post": _generation(
                    "Complete a prompt.", "CompletionRequest", "Completion", api_key
                )
            },
            "/v1/chat/completions": {
                "post": _generation(
                    "Answer a conversation.", "ChatCompletionRequest", "ChatCompletion", api_key
                )
            },
            "/v1/models": {"get": _secure(models, api_key)},
            "/v1/models/{model}": {"get": _secure(one_model, api_key)},
            "/tokenize": _tokens(
                "Token ids of a prompt, or of messages rendered as chat renders them "
                "(vLLM's route).",
                "TokenizeRequest",
                TOKENIZED,
                api_key,
            ),
            "/detokenize": _tokens(
                "The text of token ids (vLLM's route).", "DetokenizeRequest", DETOKENIZED, api_key
            ),
            "/health": _plain("The process answers.", {"200": _json(_obj({"status": STR}), "Up.")}),
            "/ready": _plain(
                "Whether the engine serves.",
                {
                    "200": _json(READY, "Ready."),
                    "503": _json(READY, "Starting, failed or shutting down."),
                },
            ),
            "/metrics": _plain(
                "Prometheus metrics.",
                {
                    "200": {
                        "description": "Text format.",
                        "content": {"text/plain": {"schema": STR}},
                    }
                },
            ),
            "/openapi.json": _plain(
                "This document.", {"200": _json({"type": "object"}, "OpenAPI 3.1.")}
            ),
        },
        "components": {
            "schemas": {
                "CompletionRequest": object_schema(bodies.CompletionBody),
                "ChatCompletionRequest": object_schema(bodies.ChatBody),
                "TokenizeRequest": object_schema(bodies.TokenizeBody),
                "DetokenizeRequest": object_schema(bodies.DetokenizeBody),
                "Completion": COMPLETION,
                "ChatCompletion": CHAT_COMPLETION,
                "Error": ERROR,
            }
        },
    }
    if api_key:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc
