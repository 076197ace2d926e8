"""Profiles: TOML files of settings for a regime, shipped in ``rt/core/profiles/``.

A profile is named (``fast-startup``) or given as a path to a user's own TOML
file. ``load_config`` is the one entry point that turns profile, config file,
environment and CLI overrides into a resolved :class:`~rt.core.config.Config`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from rt.core.config import Config
from rt.core.config_loader import Layer, cli_layer, env_layer, resolve, toml_layer
from rt.core.errors import ConfigError


def builtin_profiles() -> dict[str, Path]:
    """Name -> path of every profile shipped with rt."""
    folder = resources.files("rt.core") / "profiles"
    return {
        Path(str(entry)).stem: Path(str(entry))
        for entry in folder.iterdir()
        if str(entry).endswith(".toml")
    }


def profile_path(name_or_path: str) -> Path:
    """Find a profile by name, or accept a path to a TOML file."""
    shipped = builtin_profiles()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise ConfigError(f"profile file {name_or_path!r} does not exist")
        return path
    raise ConfigError(
        f"unknown profile {name_or_path!r}; available: {', '.join(sorted(shipped))} "
        "(or pass a path to a .toml file)"
    )


def profile_description(path: Path) -> str:
    try:
        return str(tomllib.loads(path.read_text()).get("description", ""))
    except (OSError, tomllib.TOMLDecodeError):
        return ""


def config_layers(
    profile: str | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    cli: list[tuple[str, Any, str]] | None = None,
) -> list[Layer]:
    """The layers in precedence order, lowest first (defaults are implicit)."""
    layers = []
    if profile:
        path = profile_path(profile)
        layers.append(toml_layer(path, "profile", f"profile {profile!r}"))
    if config_file:
        layers.append(toml_layer(config_file, "config", "config file"))
    layers.append(env_layer(os.environ if environ is None else environ))
    if cli:
        layers.append(cli_layer(cli))
    return layers


def load_config(
    profile: str | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    cli: list[tuple[str, Any, str]] | None = None,
) -> Config:
    """Resolve the config. ``cli`` holds ``(dotted key, value, flag)`` overrides.

    Example: ``load_config("latency", cli=[("parallel.tp", "2", "--tp")])``.
    """
    return resolve(config_layers(profile, config_file, environ, cli))
