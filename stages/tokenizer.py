"""tokenizer: load the tokenizer and compile the chat template, beside the weights."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="tokenizer",
    hook="rt_load_tokenizer",
    needs=("model",),
    where="driver",
    required=True,
    description="tokenizers + jinja2 chat template, compiled once",
)
