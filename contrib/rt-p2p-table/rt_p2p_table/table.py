"""Reading the table and matching a machine against it (no torch, no GPU needed)."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

import attrs
from rt.core import ConfigError
from rt.core.p2p import P2PTable

ENV_TABLE = "RT_P2P_TABLE"


@attrs.frozen
class System:
    name: str
    gpu: str
    count: int
    access: tuple[tuple[bool, ...], ...]
    source: str


def _system(entry: dict, source: str) -> System:
    try:
        name, gpu, count = str(entry["name"]), str(entry["gpu"]), int(entry["count"])
    except KeyError as e:
        raise ConfigError(f"hardware table {source}: a [[system]] lacks {e.args[0]!r}") from None
    if "access" in entry:
        access = tuple(tuple(bool(v) for v in row) for row in entry["access"])
        if len(access) != count or any(len(row) != count for row in access):
            raise ConfigError(
                f"hardware table {source}: system {name!r} needs a {count}x{count} access matrix"
            )
    else:
        allowed = bool(entry.get("peer_access", False))
        access = tuple(tuple(i == j or allowed for j in range(count)) for i in range(count))
    return System(name, gpu, count, access, source)


def load_systems(path: Path | None = None) -> list[System]:
    """The user's table ($RT_P2P_TABLE) first, then the shipped one."""
    sources: list[tuple[str, str]] = []
    user = path or (Path(os.environ[ENV_TABLE]) if os.environ.get(ENV_TABLE) else None)
    if user is not None:
        try:
            sources.append((str(user), user.read_text()))
        except OSError as e:
            raise ConfigError(
                f"cannot read hardware table {str(user)!r} ({ENV_TABLE}): {e.strerror}"
            ) from None
    shipped = resources.files("rt_p2p_table") / "tables" / "default.toml"
    sources.append(("default.toml", shipped.read_text()))
    systems = []
    for source, text in sources:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"hardware table {source} is not valid TOML: {e}") from None
        systems += [_system(entry, source) for entry in data.get("system", [])]
    return systems


def lookup(
    systems: list[System], device_names: list[str], device_ids: list[str]
) -> P2PTable | None:
    """The table of the first system whose count and GPU names match, else None."""
    for system in systems:
        if system.count == len(device_names) and all(n == system.gpu for n in device_names):
            return P2PTable(tuple(device_ids), system.access, f"hardware-table:{system.name}")
    return None
