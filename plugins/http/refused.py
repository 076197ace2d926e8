"""Fields of OpenAI's API that rt does not implement, declared so that a request which
relies on one is refused (422, naming the field and why) instead of being served as if
the field were not there. A neutral value (``"tools": []``, ``"tool_choice": "none"``)
is accepted: clients and SDKs send those by default."""

from __future__ import annotations

from typing import Any

import attrs
from rt.plugins.http.fields import Invalid


def _same(a: Any, b: Any) -> bool:
    # JSON's true is not 1, nor 1.0 true (Python's == says they are)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return type(a) is type(b) and a == b


@attrs.frozen
class Refused:
    """Only ``accepts`` (values that ask for nothing rt lacks) pass; anything else is
    refused with ``why``."""

    accepts: tuple[Any, ...]
    why: str
    noun = "a value rt implements"

    def kind_ok(self, value: Any) -> bool:
        return True

    def check(self, value: Any, where: str) -> Any:
        if any(_same(value, a) for a in self.accepts):
            return value
        raise Invalid(where, f"{where} is not supported: {self.why}")

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.accepts)}


TOOLS = Refused(([],), "rt generates text, not tool calls; leave it out")
TOOL_CHOICE = Refused(("none", "auto"), "rt generates text, not tool calls; leave it out")
RESPONSE_FORMAT = Refused(
    ({"type": "text"},), 'rt does not constrain the output to JSON; only {"type": "text"}'
)
SUFFIX = Refused(("",), "rt does not insert text before a suffix; leave it out")
