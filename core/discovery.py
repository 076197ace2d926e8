"""Discovery: read the ``rt.plugins`` and ``rt.stages`` entry points without loading them.

Reading entry points imports nothing from the distributions that declare them;
a plugin's module is imported only by :meth:`PluginEntry.load`, which happens only
for selected plugins.
"""

from __future__ import annotations

import importlib.metadata as md
import traceback

import attrs
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
            return md.EntryPoint(self.name, self.value, PLUGIN_GROUP).load()
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
            stage = md.EntryPoint(self.name, self.value, STAGE_GROUP).load()
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


def _entries(installed: md.EntryPoints, group: str, cls: type, versions: dict[str, str]) -> tuple:
    found: dict[str, object] = {}
    for ep in installed.select(group=group):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        if dist not in versions:  # each read parses the distribution's METADATA file
            versions[dist] = ep.dist.version if ep.dist is not None else "?"
        entry = cls(ep.name, ep.value, dist, versions[dist])
        previous = found.get(ep.name)
        # The same distribution can be visible twice on sys.path (an editable
        # install plus a source checkout); only a real clash is an error.
        if previous is not None and (previous.value, previous.dist) != (entry.value, entry.dist):
            raise PluginError(
                f"two distributions register {group} entry point {ep.name!r}: "
                f"{previous.dist!r} ({previous.value}) and {dist!r} ({ep.value}); "
                "uninstall one of them"
            )
        found[ep.name] = entry
    return tuple(sorted(found.values(), key=lambda e: (not e.builtin, e.name)))


def discover() -> Catalog:
    """Read (never load) every installed plugin and stage entry point."""
    # One pass over the installed distributions serves both groups (on every CLI start).
    installed = md.entry_points()
    versions: dict[str, str] = {}
    return Catalog(
        plugins=_entries(installed, PLUGIN_GROUP, PluginEntry, versions),
        stages=_entries(installed, STAGE_GROUP, StageEntry, versions),
    )
