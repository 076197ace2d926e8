"""Build a fresh plugin manager from a selection (one per runtime, test and rank)."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Sequence
from typing import Any

import pluggy
from rt.core import hookspecs
from rt.core.discovery import PluginEntry
from rt.core.errors import PluginError
from rt.core.markers import PROJECT
from rt.core.selection import Selection
from rt.core.stage import Stage


class RtPluginManager(pluggy.PluginManager):
    """A ``pluggy.PluginManager`` that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.entries: dict[str, PluginEntry] = {}

    def origin(self, plugin_name: str | None) -> str:
        """``"plugin 'tp' (distribution 'rt' 0.1.0)"`` for messages."""
        entry = self.entries.get(plugin_name or "")
        where = f" ({entry.origin})" if entry else " (registered in-process)"
        return f"plugin {plugin_name!r}{where}"

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """pluggy's answer, read straight from a module plugin's ``__dict__``.

        pluggy looks every attribute of a plugin up with ``inspect.getattr_static``
        (so that no descriptor runs): ~500 attributes over the built-in plugins took
        ~8 of the ~11 ms a plugin manager costs, paid by every start and every rank.
        A module's attribute is its ``__dict__`` entry, so the same answer is one
        lookup: a function's (or bound method's) marker, None for anything else that
        is not a static or class method. Other plugins and names go to pluggy.
        """
        if not isinstance(plugin, types.ModuleType) or name not in plugin.__dict__:
            return super().parse_hookimpl_opts(plugin, name)
        value = plugin.__dict__[name]
        if isinstance(value, types.MethodType):
            value = value.__func__
        elif not isinstance(value, types.FunctionType):
            if isinstance(value, (staticmethod, classmethod)):
                return super().parse_hookimpl_opts(plugin, name)
            return None
        opts = getattr(value, self.project_name + "_impl", None)
        return opts if isinstance(opts, dict) else None

    def hooks_of(self, plugin: object) -> list[str]:
        """The hook names a registered plugin implements."""
        return sorted(hc.name for hc in self.get_hookcallers(plugin) or [])


def _check_pending(pm: RtPluginManager) -> None:
    """Like ``check_pending`` but the error names the plugin and its distribution."""
    known = sorted(n for n in vars(pm.hook) if getattr(pm.hook, n).has_spec())
    problems = []
    for name in sorted(vars(pm.hook)):
        caller = getattr(pm.hook, name)
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            maybe = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{pm.origin(impl.plugin_name)} implements unknown hook {name!r}{maybe}"
            )
    if problems:
        raise PluginError(
            "\n".join(problems) + "\n(a stage that declares this hook may not be selected; "
            "`rt stages` lists the known stages and hooks)"
        )


def build_plugin_manager(
    selection: Selection,
    extra_plugins: Iterable[tuple[str, object]] = (),
    extra_stages: Sequence[Stage] = (),
) -> tuple[RtPluginManager, list[Stage]]:
    """Register the selected plugins and stages; return the manager and the stages.

    ``extra_plugins`` and ``extra_stages`` are in-process additions (tests, embedding
    applications); they are treated exactly like selected entry points.
    """
    pm = RtPluginManager()
    stages = [entry.load() for entry in selection.stages] + list(extra_stages)
    for stage in stages:
        if stage.specs is not None:
            pm.add_hookspecs(stage.specs)
    for entry in selection.plugins:
        pm.entries[entry.name] = entry
        _register(pm, entry.name, entry.load())
    for name, plugin in extra_plugins:
        _register(pm, name, plugin)
    _check_pending(pm)
    return pm, stages


def _register(pm: RtPluginManager, name: str, plugin: object) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as e:
        raise PluginError(f"{pm.origin(name)} cannot be registered: {e}") from e
