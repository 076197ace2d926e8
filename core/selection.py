"""Selection: which discovered plugins and stages are active in this runtime.

Built-in plugins are on unless blocked with ``no:NAME``; third-party plugins are
on only when named (``--plugins=a,b``, the profile's ``plugins``, ``RT_PLUGINS``).
A third-party distribution's stages join the graph when one of its plugins is
selected, so installing a package never changes startup by itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from rt.core.discovery import Catalog, PluginEntry, StageEntry
from rt.core.errors import UsageError


@attrs.frozen
class Selection:
    """The frozen, picklable result: what the driver and every rank register."""

    plugins: tuple[PluginEntry, ...]
    stages: tuple[StageEntry, ...]
    blocked: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.plugins)


def parse_plugin_spec(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``["a,b", "no:c"]`` into wanted ``["a", "b"]`` and blocked ``["c"]``.

    Later items win: ``["a", "no:a"]`` blocks ``a``, ``["no:a", "a"]`` selects it.
    """
    wanted: list[str] = []
    blocked: list[str] = []
    for item in items:
        for name in (part.strip() for part in item.split(",")):
            if not name:
                continue
            if name.startswith("no:"):
                plain = name[3:]
                blocked.append(plain)
                if plain in wanted:
                    wanted.remove(plain)
            else:
                wanted.append(name)
                if name in blocked:
                    blocked.remove(name)
    return wanted, blocked


def select(catalog: Catalog, spec: Iterable[str]) -> Selection:
    """Resolve a plugin spec against what is installed; unknown names are errors."""
    wanted, blocked = parse_plugin_spec(spec)
    known = {p.name for p in catalog.plugins}
    unknown = sorted({n for n in wanted + blocked if n not in known})
    if unknown:
        available = ", ".join(
            f"{p.name} ({'built-in' if p.builtin else p.dist})" for p in catalog.plugins
        )
        raise UsageError(
            f"unknown plugin name{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
            f"available: {available or '(none installed)'}"
        )
    chosen = tuple(
        p for p in catalog.plugins if p.name not in blocked and (p.builtin or p.name in wanted)
    )
    dists = {p.dist for p in chosen}
    stages = tuple(s for s in catalog.stages if s.builtin or s.dist in dists)
    return Selection(plugins=chosen, stages=stages, blocked=tuple(sorted(set(blocked))))
