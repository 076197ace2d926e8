"""``/openapi.json``: generated from the request declarations, and agreeing with them."""

from __future__ import annotations

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rt.plugins.http import bodies, openapi
from rt.plugins.http.errors import ApiError
from rt.plugins.http.fields import load, object_schema

BODIES = {
    bodies.CompletionBody: {"prompt": "hi"},
    bodies.ChatBody: {"messages": [{"role": "user", "content": "hi"}]},
}

# JSON values, with the edges a client can send: integral floats, big integers
# (within float range: past it JSON numbers are not interoperable), unicode, nesting.
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from([0, 1, 4, 5, 20, 21, -1, 2**63 - 1, 2**63, 1.0, 0.5, 1e-30, 2.0, "", "text"])
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
PARTS = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": SCALARS})
MESSAGES = st.fixed_dictionaries(
    {"role": SCALARS}, optional={"content": SCALARS | st.lists(PARTS | SCALARS, max_size=3)}
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
VALUES = SCALARS | st.lists(SCALARS, max_size=6) | st.lists(MESSAGES, max_size=2) | JSON


def _accepts(model: type, body: dict) -> bool:
    try:
        load(model, body)
    except ApiError as e:
        assert e.status == 422 and e.param in body and "\n" not in e.message
        return False
    return True


@pytest.mark.parametrize("model", list(BODIES), ids=lambda m: m.__name__)
def test_validation_and_schema_agree_on_every_value(model):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    validator = jsonschema_rs.validator_for(object_schema(model))
    names = [a.name for a in attrs.fields(model)]

    @settings(
        max_examples=400,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.dictionaries(st.sampled_from(names), VALUES, max_size=3))
    def agree(fields: dict) -> None:
        body = {**BODIES[model], **fields}
        assert _accepts(model, body) == validator.is_valid(body), body

    agree()


def test_request_schemas_are_the_declarations():
    doc = openapi.document()
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat == object_schema(bodies.ChatBody)
    assert set(chat["properties"]) == {a.name for a in attrs.fields(bodies.ChatBody)}
    assert chat["required"] == ["messages"]
    max_tokens = schemas["CompletionRequest"]["properties"]["max_tokens"]
    assert max_tokens["anyOf"][0] == {"type": "integer", "minimum": 0}  # 0: with echo
    assert chat["properties"]["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 1}
    assert schemas["CompletionRequest"]["properties"]["temperature"]["default"] == 1.0


def test_document_lists_the_routes_and_error_bodies():
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/tokenize",
        "/detokenize",
    }
    responses = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert set(responses) == {"200", "400", "404", "408", "413", "422", "429", "503"}
    error = responses["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    assert set(doc["components"]["schemas"]["Error"]["properties"]["error"]["required"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert "security" not in doc["paths"]["/v1/completions"]["post"]


def test_with_an_api_key_the_v1_routes_declare_bearer_auth_and_401():
    doc = openapi.document(api_key=True)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method in [("/v1/completions", "post"), ("/v1/models", "get"), ("/tokenize", "post")]:
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"bearer": []}] and "401" in operation["responses"]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_the_document_is_a_valid_openapi_schema():
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_dict(openapi.document(api_key=True))
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert "POST /v1/chat/completions" in labels and "GET /openapi.json" in labels


def test_served_at_openapi_json(server):
    r = httpx.get(server + "/openapi.json")
    assert r.status_code == 200 and r.json() == openapi.document()
