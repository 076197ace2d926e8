"""OpenAI request bodies, declared once.

Each body is an attrs class built from ``fields.py`` declarations: the same
declaration validates a request and becomes its JSON Schema in ``/openapi.json``.
What a declaration cannot say (a rule across two fields, the context length) is in
``openai_api.py``, which turns a body into a request for the engine.
"""

from __future__ import annotations

from typing import Any

import attrs
from rt.core.sampling import (
    MAX_LOGIT_BIAS,
    MAX_PENALTY,
    MAX_REPETITION_PENALTY,
    MIN_REPETITION_PENALTY,
)
from rt.plugins.http import refused
from rt.plugins.http.fields import AnyOf, Array, Boolean, Integer, Number, Object, String, field
from rt.plugins.http.token_map import TokenMap

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 16  # n: each choice is a sequence the engine decodes
MAX_PROMPTS = 256  # a completions batch; prompts x n choices at most MAX_BATCH_CHOICES
MAX_BATCH_CHOICES = 256
MAX_STOP_TOKEN_IDS = 256  # the scheduler checks each sampled token against them
MAX_LOGIT_BIAS_TOKENS = 1024  # each costs the sampler a little, every step of the request
# Below this a temperature is greedy: logits divided by it overflow float32 to inf,
# and a softmax over infinities is NaN (vLLM draws the same line).
MIN_TEMPERATURE = 1e-5

_TOKEN_IDS = Array(Integer(minimum=0), min_items=1)


@attrs.frozen
class StreamOptions:
    include_usage: bool = field(
        Boolean(),
        "Send a last chunk, with empty choices, that carries the usage.",
        default=False,
    )


@attrs.frozen
class CommonBody:
    """What both generation routes accept."""

    model: str | None = field(String(), "The served model's id (or its source); may be left out.")
    max_tokens: int | None = field(
        Integer(minimum=1),
        "The most tokens to generate. Prompt plus max_tokens must fit in the context "
        "(max_model_len in /v1/models), else 400 context_length_exceeded.",
    )
    temperature: float = field(Number(minimum=0), "Sampling temperature; 0 is greedy.", default=1.0)
    top_p: float = field(
        Number(minimum=0, maximum=1, exclusive_minimum=True),
        "Nucleus sampling: keep the most likely tokens whose mass reaches top_p.",
        default=1.0,
        explain="top_p must be in (0, 1], got {value}",
    )
    # vLLM's extra sampling parameters (openai clients send them in extra_body)
    top_k: int = field(
        Integer(minimum=-1, maximum=2**31 - 1),
        "Keep only the k most likely tokens; 0 or -1: no cut (vLLM's parameter).",
        default=0,
    )
    min_p: float = field(
        Number(minimum=0, maximum=1),
        "Keep only the tokens at least min_p times as likely as the most likely one "
        "(vLLM's parameter).",
        default=0.0,
    )
    repetition_penalty: float = field(
        Number(minimum=MIN_REPETITION_PENALTY, maximum=MAX_REPETITION_PENALTY),
        "Divide the positive logits of the prompt's and output's tokens by this, multiply "
        "the negative ones; 1: none (vLLM's parameter).",
        default=1.0,
    )
    min_tokens: int = field(
        Integer(minimum=0),
        "Generate at least this many tokens before EOS or stop_token_ids may end the text "
        "(vLLM's parameter); at most max_tokens.",
        default=0,
    )
    ignore_eos: bool = field(
        Boolean(), "Generate past the end-of-sequence token (vLLM's parameter).", default=False
    )
    stop_token_ids: list[int] | None = field(
        Array(Integer(minimum=0), max_items=MAX_STOP_TOKEN_IDS),
        "Token ids that end the text like EOS (vLLM's parameter).",
    )
    n: int = field(
        Integer(minimum=1, maximum=MAX_CHOICES),
        f"How many choices to generate for the prompt (at most {MAX_CHOICES}), each a "
        "sequence of its own.",
        default=1,
        explain=f"n must be in [1, {MAX_CHOICES}], got n={{value}}",
    )
    seed: int | None = field(
        Integer(minimum=-(2**63), maximum=2**63 - 1),
        "Makes sampling reproducible: the same seed and parameters give the same tokens.",
    )
    stop: str | list[str] | None = field(
        AnyOf((String(min_length=1), Array(String(min_length=1), max_items=MAX_STOP_SEQUENCES))),
        "Up to 4 strings that end the text; the one found is not part of it.",
        explain=f"stop must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} "
        "of them, got {value}",
    )
    stream: bool = field(Boolean(), "Stream server-sent events.", default=False)
    stream_options: StreamOptions | None = field(
        Object(StreamOptions), "Options of a streamed response."
    )
    presence_penalty: float = field(
        Number(minimum=-MAX_PENALTY, maximum=MAX_PENALTY),
        "Subtracted once from the logit of every token already generated (not the prompt's).",
        default=0.0,
    )
    frequency_penalty: float = field(
        Number(minimum=-MAX_PENALTY, maximum=MAX_PENALTY),
        "Subtracted from the logit of every generated token, once per time it was generated.",
        default=0.0,
    )
    logit_bias: tuple[tuple[int, float], ...] | None = field(
        TokenMap(Number(minimum=-MAX_LOGIT_BIAS, maximum=MAX_LOGIT_BIAS), MAX_LOGIT_BIAS_TOKENS),
        "Added to the logits of these token ids before sampling: -100 bans a token, "
        "100 all but forces it. Logprobs report the model's own distribution.",
    )


@attrs.frozen
class CompletionBody(CommonBody):
    """The body of ``POST /v1/completions``."""

    prompt: Any = field(
        AnyOf((String(), _TOKEN_IDS, Array(AnyOf((String(), _TOKEN_IDS)), 1, MAX_PROMPTS))),
        f"A string, a list of token ids, or a batch: a list of up to {MAX_PROMPTS} of those, "
        "each with n choices of its own (choice index = prompt index * n + choice).",
        required=True,
        explain="prompt must be a string, a list of token ids, or a list of up to "
        f"{MAX_PROMPTS} of those, got {{value}}",
    )
    max_tokens: int | None = field(
        Integer(minimum=0),
        "The most tokens to generate; 0 only with echo (the prompt's logprobs alone). "
        "Prompt plus max_tokens must fit in the context (max_model_len in /v1/models), "
        "else 400 context_length_exceeded.",
    )
    echo: bool = field(
        Boolean(),
        "Put the prompt before the completion: in the text, and with logprobs, its tokens "
        "first (the first one's logprob null: nothing precedes it).",
        default=False,
    )
    best_of: int = field(
        Integer(minimum=1, maximum=1),
        "How many completions to choose the best from: rt generates one.",
        default=1,
        explain="only best_of=1 is supported, got best_of={value}",
    )
    suffix: str | None = field(refused.SUFFIX, "rt does not insert text before a suffix.")
    logprobs: int | None = field(
        Integer(minimum=0, maximum=MAX_TOP_LOGPROBS),
        "Report each token's logprob and this many most likely alternatives.",
    )


@attrs.frozen
class TextPart:
    type: str = field(
        String(enum=("text",)),
        "Only text parts.",
        required=True,
        explain="{where}: only text parts are supported, got {value}",
    )
    text: str = field(String(), "The text.", required=True)


@attrs.frozen
class Message:
    role: str = field(String(), "system, user, assistant, ...", required=True)
    content: str | list[TextPart] | None = field(
        AnyOf((String(), Array(Object(TextPart)))), "Text, or a list of text parts."
    )


@attrs.frozen
class ChatBody(CommonBody):
    """The body of ``POST /v1/chat/completions``."""

    messages: list[Message] = field(
        Array(Object(Message), min_items=1),
        "The conversation, rendered with the model's chat template.",
        required=True,
        explain="messages must be a non-empty list of messages, got {value}",
    )
    max_completion_tokens: int | None = field(
        Integer(minimum=1), "OpenAI's newer name for max_tokens; wins when both are given."
    )
    logprobs: bool = field(
        Boolean(), "Report each token's logprob (choices[].logprobs.content).", default=False
    )
    top_logprobs: int | None = field(
        Integer(minimum=0, maximum=MAX_TOP_LOGPROBS),
        "With logprobs: true, this many most likely alternatives per token.",
    )
    tools: list | None = field(refused.TOOLS, "rt generates no tool calls: none or [].")
    tool_choice: str | None = field(refused.TOOL_CHOICE, "rt generates no tool calls.")
    functions: list | None = field(refused.TOOLS, "The deprecated tools: none or [].")
    function_call: str | None = field(refused.TOOL_CHOICE, "The deprecated tool_choice.")
    response_format: dict | None = field(
        refused.RESPONSE_FORMAT, 'rt generates free text: {"type": "text"} only.'
    )


@attrs.frozen
class TokenizeBody:
    """The body of ``POST /tokenize`` (vLLM's route): a prompt, or messages."""

    model: str | None = field(String(), "The served model's id (or its source); may be left out.")
    prompt: str | None = field(String(), "Text to tokenize, as /v1/completions would.")
    messages: list[Message] | None = field(
        Array(Object(Message), min_items=1),
        "A conversation to render with the model's chat template and tokenize, as "
        "/v1/chat/completions would.",
    )
    add_special_tokens: bool | None = field(
        Boolean(),
        "Add the tokenizer's special tokens (BOS); default: true for a prompt, false for "
        "messages (their template writes them).",
    )
    add_generation_prompt: bool = field(
        Boolean(), "With messages: end with the assistant's turn, as chat does.", default=True
    )


@attrs.frozen
class DetokenizeBody:
    """The body of ``POST /detokenize`` (vLLM's route)."""

    model: str | None = field(String(), "The served model's id (or its source); may be left out.")
    tokens: list[int] = field(
        Array(Integer(minimum=0)), "Token ids, each below the vocabulary size.", required=True
    )
