"""Resolve a :class:`~rt.core.config.Config` from layered sources.

Precedence, lowest first: defaults < profile (``--profile NAME`` or a TOML path)
< ``--config FILE`` < ``RT_SECTION__KEY`` environment variables < CLI flags
(``--set section.key=value`` and dedicated flags such as ``--tp``). The
``plugins`` key accumulates instead: every source's names and ``no:NAME`` blocks
are applied in precedence order, so a CLI ``no:x`` beats a profile's ``x``.

Every value remembers where it came from, so an error names the key, the value and
the file and line (or the variable, or the flag).
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from rt.core.config import SECTIONS, Config
from rt.core.errors import ConfigError

ENV_PREFIX = "RT_"
# Short environment names for the settings people most often set by hand.
ENV_ALIASES = {"RT_API_KEY": "server.api_key", "RT_PLUGINS": "plugins"}
# Top-level keys of a profile file that describe it and are not settings.
PROFILE_META_KEYS = ("description",)


@attrs.frozen
class Source:
    """Where a value came from: ``profile 'latency' (/path/latency.toml, line 4)``."""

    kind: str
    label: str
    path: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or ""
        if self.line is not None:
            where += f", line {self.line}"
        return f"{self.label} ({where})" if where else self.label


@attrs.define
class Layer:
    """The settings from one source, as dotted keys."""

    source: Source
    values: dict[str, tuple[Any, Source]] = attrs.field(factory=dict)

    def set(self, key: str, value: Any, line: int | None = None) -> None:
        self.values[key] = (value, attrs.evolve(self.source, line=line))


def _key_lines(text: str) -> dict[str, int]:
    """Map dotted keys to the line that sets them (TOML tables and plain keys)."""
    lines: dict[str, int] = {}
    table = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            table = line.strip("[] ")
            continue
        if "=" in line and not line.startswith("#"):
            key = line.split("=", 1)[0].strip().strip('"')
            lines[f"{table}.{key}" if table else key] = number
    return lines


def toml_layer(path: str | Path, kind: str, label: str) -> Layer:
    """Read one TOML file into a layer; a syntax error names the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {label} {str(path)!r}: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label} {str(path)!r} is not valid TOML: {e}") from None
    layer = Layer(Source(kind, label, str(path)))
    lines = _key_lines(text)
    for key, value in data.items():
        if key in PROFILE_META_KEYS:
            continue
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                layer.set(dotted, subvalue, lines.get(dotted))
        else:
            layer.set(key, value, lines.get(key))
    return layer


def env_layer(environ: Mapping[str, str]) -> Layer:
    """``RT_SERVER__PORT=9000`` sets ``server.port``; see ``ENV_ALIASES`` for short names."""
    layer = Layer(Source("env", "environment"))
    for name, value in sorted(environ.items()):
        if name in ENV_ALIASES:
            key = ENV_ALIASES[name]
        elif name.startswith(ENV_PREFIX) and "__" in name:
            section, _, field = name[len(ENV_PREFIX) :].partition("__")
            key = f"{section.lower()}.{field.lower()}"
        else:
            continue
        layer.values[key] = (value, Source("env", f"environment variable {name}"))
    return layer


def cli_layer(pairs: list[tuple[str, Any, str]]) -> Layer:
    """CLI overrides: ``(key, value, flag)`` triples; ``flag`` is shown in errors."""
    layer = Layer(Source("cli", "command line"))
    for key, value, flag in pairs:
        if key == "plugins" and key in layer.values:
            # Plugin specs accumulate: "--plugins a -p no:b" keeps both.
            value = [*layer.values[key][0], value]
        elif key == "plugins":
            value = [value]
        layer.values[key] = (value, Source("cli", f"command-line {flag}"))
    return layer


def parse_set_option(text: str) -> tuple[str, str]:
    """``--set server.port=9000`` -> ``("server.port", "9000")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set server.port=9000), got {text!r}")
    return key.strip(), value


def _field_type(section_cls: type, name: str) -> Any:
    hints = typing.get_type_hints(section_cls)
    return hints[name]


def _coerce(value: Any, hint: Any) -> Any:
    """Turn a TOML value or a string from the environment/CLI into ``hint``'s type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0])
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(
            _coerce(item.strip() if isinstance(item, str) else item, args[0])
            for item in items
            if item != ""
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError(f"expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError(f"expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _unknown_key(key: str, source: Source) -> ConfigError:
    section, _, field = key.partition(".")
    if section in SECTIONS and field:
        known = [f.name for f in attrs.fields(SECTIONS[section])]
        candidates = [f"{section}.{k}" for k in known]
        hint = f"known keys in [{section}]: {', '.join(known)}"
    else:
        candidates = ["plugins", *SECTIONS]
        hint = f"known sections: {', '.join(SECTIONS)} (and the top-level key 'plugins')"
    close = difflib.get_close_matches(key, candidates, n=1)
    maybe = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown config key {key!r} from {source}; {hint}{maybe}")


def _validate(cls: type, section: str, name: str, value: Any, source: Source | None) -> None:
    """Run one field's converter and validators, so an error names that key and source."""
    field = attrs.fields_dict(cls)[name]
    try:
        converted = field.converter(value) if field.converter else value
        if field.validator is not None:
            field.validator(None, field, converted)
    except (ValueError, TypeError) as e:
        reason = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        raise ConfigError(
            f"bad value for {section}.{name}: {value!r} from {source or 'config'}: {reason}"
        ) from None


def resolve(layers: list[Layer]) -> Config:
    """Merge layers (lowest precedence first) into a validated, frozen Config."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    plugins: list[str] = []
    provenance: dict[str, Source] = {}
    for layer in layers:
        for key, (value, source) in layer.values.items():
            if key == "plugins":
                plugins.extend(_coerce(value, tuple[str, ...]))
                continue
            section, _, field = key.partition(".")
            if section not in SECTIONS or not field or "." in field:
                raise _unknown_key(key, source)
            if field not in attrs.fields_dict(SECTIONS[section]):
                raise _unknown_key(key, source)
            try:
                sections[section][field] = _coerce(value, _field_type(SECTIONS[section], field))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"bad value for {key}: {value!r} from {source}: {e}") from None
            provenance[key] = source
    built: dict[str, Any] = {}
    for section, values in sections.items():
        cls = SECTIONS[section]
        for name, value in values.items():
            _validate(cls, section, name, value, provenance.get(f"{section}.{name}"))
        built[section] = cls(**values)
    return Config(plugins=tuple(plugins), **built)
