"""Discovery: read the ``rt.plugins`` and ``rt.stages`` entry points without loading them.

Reading entry points imports nothing from the distributions that declare them;
a plugin's module is imported only by :meth:`PluginEntry.load`, which happens only
for selected plugins.
"""

from __future__ import annotations

import traceback

import attrs
from rt.core.entry_points import EntryPoint, entry_points
from rt.core.errors import PluginError
from rt.core.stage import Stage

PLUGIN_GROUP = "rt.plugins"
STAGE_GROUP = "rt.stages"
RT_DISTRIBUTION = "rt"


@attrs.frozen
class PluginEntry:
    """An installed plugin, as its entry point declares it. Picklable, so a TP rank
    can rebuild the driver's selection without scanning entry points again."""

    name: str
    value: str
    dist: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.dist == RT_DISTRIBUTION

    @property
    def origin(self) -> str:
        return f"distribution {self.dist!r} {self.version}"

    def load(self) -> object:
        """Import the module (or object) the entry point names."""
        try:
            return EntryPoint(self.name, self.value, PLUGIN_GROUP, self.dist, self.version).load()
        except Exception as e:
            raise PluginError(
                f"plugin {self.name!r} from {self.origin} failed to import "
                f"({self.value}): {type(e).__name__}: {e}\n{traceback.format_exc().rstrip()}"
            ) from e


@attrs.frozen
class StageEntry:
    """An installed stage: an entry point naming a :class:`~rt.core.Stage` record."""

    name: str
    value: str
    dist: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.dist == RT_DISTRIBUTION

    def load(self) -> Stage:
        try:
            stage = EntryPoint(self.name, self.value, STAGE_GROUP, self.dist, self.version).load()
        except Exception as e:
            raise PluginError(
                f"stage {self.name!r} from distribution {self.dist!r} {self.version} "
                f"failed to import ({self.value}): {type(e).__name__}: {e}"
            ) from e
        if not isinstance(stage, Stage):
            raise PluginError(
                f"stage entry point {self.name!r} from distribution {self.dist!r} names "
                f"{type(stage).__name__}, not an rt.core.Stage ({self.value})"
            )
        return stage


@attrs.frozen
class Catalog:
    """Everything installed: plugins and stages, built-in first, then by name."""

    plugins: tuple[PluginEntry, ...]
    stages: tuple[StageEntry, ...]

    def plugin(self, name: str) -> PluginEntry | None:
        return next((p for p in self.plugins if p.name == name), None)


def _entries(installed: list[EntryPoint], group: str, cls: type) -> tuple:
    found: dict[str, object] = {}
    for ep in installed:
        if ep.group != group:
            continue
        entry = cls(ep.name, ep.value, ep.dist, ep.version)
        previous = found.get(ep.name)
        # entry_points() already kept the first of a distribution that sys.path shows
        # twice (an editable install plus a source checkout): this is a real clash.
        if previous is not None and (previous.value, previous.dist) != (entry.value, entry.dist):
            raise PluginError(
                f"two distributions register {group} entry point {ep.name!r}: "
                f"{previous.dist!r} ({previous.value}) and {ep.dist!r} ({ep.value}); "
                "uninstall one of them"
            )
        found[ep.name] = entry
    return tuple(sorted(found.values(), key=lambda e: (not e.builtin, e.name)))


def discover() -> Catalog:
    """Read (never load) every installed plugin and stage entry point."""
    # One pass over the installed distributions serves both groups (on every CLI start).
    installed = entry_points([PLUGIN_GROUP, STAGE_GROUP])
    return Catalog(
        plugins=_entries(installed, PLUGIN_GROUP, PluginEntry),
        stages=_entries(installed, STAGE_GROUP, StageEntry),
    )
