"""``logit_bias``'s JSON type: an object from token ids (as strings, JSON's only keys)
to numbers, declared like the types in ``fields.py``, whose protocol it follows."""

from __future__ import annotations

from typing import Any

import attrs
from rt.plugins.http.fields import Invalid, Number, show


@attrs.frozen
class TokenMap:
    """``{"1234": -100, ...}``: at most ``max_entries`` token ids, each mapped to a
    number that ``values`` accepts. The checked value is a tuple of ``(id, number)``."""

    values: Number
    max_entries: int
    noun = "an object from token ids to numbers"

    def kind_ok(self, value: Any) -> bool:
        return isinstance(value, dict)

    def check(self, value: Any, where: str) -> tuple[tuple[int, float], ...]:
        if not isinstance(value, dict):
            raise Invalid(where, f"{where} must be {self.noun}, got {show(value)}")
        if len(value) > self.max_entries:
            raise Invalid(
                where, f"{where} may name at most {self.max_entries} tokens, got {len(value)}"
            )
        pairs = []
        for key, number in value.items():
            # str.isdigit takes other scripts' digits ("²", "٣"): ASCII only, as the schema
            if not (key.isascii() and key.isdigit()) or len(key) > 10:
                raise Invalid(where, f'{where}\'s keys must be token ids ("1234"), got {show(key)}')
            pairs.append((int(key), self.values.check(number, f"{where}[{key!r}]")))
        if len({token for token, _ in pairs}) < len(pairs):  # "7" and "07"
            raise Invalid(where, f"{where} names a token id twice (keys differing in zeros)")
        return tuple(pairs)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]{1,10}$"},
            "additionalProperties": self.values.schema(),
            "maxProperties": self.max_entries,
        }
