"""Entry points and versions of installed distributions, read from their metadata files.

What ``importlib.metadata``'s ``entry_points()`` and ``version()`` give for the
distributions it finds on ``sys.path`` (``*.dist-info`` and ``*.egg-info`` folders; the
first of each name wins), for the groups asked for only. ``importlib.metadata`` itself costs ~25-50 ms
to import on the 2-core VM (email, zipfile, csv ...), and every ``rt`` command reads
entry points before ``rt_cli_start``, where ``rt serve`` starts the import of torch
that its first token waits on. Distributions that only a custom ``sys.meta_path``
finder knows of (none of pip's install kinds) are not seen.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

_META_DIR = re.compile(r"^(?P<name>[^-]+)(?:-(?P<version>[^-]+))?(?:-.*)?\.(dist|egg)-info$")
_EXTRAS = re.compile(r"\s*\[.*\]\s*$")  # "module:attr [extra]": extras select nothing here


class EntryPoint(NamedTuple):
    """``name = value`` in ``group`` of distribution ``dist`` (its version too).

    A named tuple, not an attrs record: ``rt.core.launch`` reads launchers through this
    module before anything else, and attrs costs ~15 ms to import."""

    name: str
    value: str
    group: str
    dist: str
    version: str

    def load(self) -> object:
        """Import ``module`` of ``module:attr.path`` and return the object it names."""
        module, _, attr = _EXTRAS.sub("", self.value).partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(paths: Iterable[str] | None) -> Iterator[tuple[str, str, re.Match]]:
    """(folder, normalized name, name match) of each distribution on ``paths``
    (``sys.path``), in path order; one seen again further down the path is skipped."""
    seen: set[str] = set()
    for entry in sys.path if paths is None else paths:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # a zip file, or a folder that is not there
            continue
        for name in names:
            match = _META_DIR.match(name)
            key = _normalized(match["name"]) if match else ""
            if not key or key in seen:
                continue
            seen.add(key)
            yield os.path.join(entry or ".", name), key, match


def _headers(folder: str) -> dict[str, str]:
    """Name and Version from METADATA (PKG-INFO for egg-info); the headers end at the
    first blank line."""
    found: dict[str, str] = {}
    for filename in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(folder, filename), encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        break
                    key, _, value = line.partition(":")
                    if key in ("Name", "Version") and key not in found:
                        found[key] = value.strip()
        except OSError:
            continue
        break
    return found


def _sections(text: str, groups: set[str]) -> Iterator[tuple[str, str, str]]:
    """(group, name, value) of an entry_points.txt, for the wanted groups."""
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
        elif group in groups and "=" in line:
            name, _, value = line.partition("=")
            yield group, name.strip(), value.strip()


def distribution_version(name: str, paths: Iterable[str] | None = None) -> str | None:
    """The version of installed distribution ``name`` (the first on ``paths``), or None:
    ``importlib.metadata.version`` without importing ``importlib.metadata``."""
    wanted = _normalized(name)
    for folder, key, match in _distributions(paths):
        if key == wanted:
            return _headers(folder).get("Version") or match["version"]
    return None


def entry_points(groups: Iterable[str], paths: Iterable[str] | None = None) -> list[EntryPoint]:
    """Every entry point in ``groups`` of the distributions on ``paths`` (``sys.path``),
    in path order; a distribution seen again further down the path is skipped."""
    wanted = set(groups)
    found: list[EntryPoint] = []
    for folder, _, match in _distributions(paths):
        try:
            with open(os.path.join(folder, "entry_points.txt"), encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        points = list(_sections(text, wanted))
        if not points:
            continue
        headers = _headers(folder)  # read only for the few distributions that matter
        dist = headers.get("Name") or match["name"]
        version = headers.get("Version") or match["version"] or "?"
        found += [EntryPoint(name, value, group, dist, version) for group, name, value in points]
    return found
