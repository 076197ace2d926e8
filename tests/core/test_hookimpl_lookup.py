"""rt's plugin manager finds the same hook implementations as pluggy's own lookup."""

from __future__ import annotations

import types

import pluggy
from rt.core import hookimpl
from rt.core.cli import resolve
from rt.core.pluginmanager import RtPluginManager, build_plugin_manager


def _pluggy(pm: RtPluginManager, plugin: object, name: str):
    return pluggy.PluginManager.parse_hookimpl_opts(pm, plugin, name)


def test_every_builtin_plugin_attribute_gets_pluggys_answer():
    pm, _ = build_plugin_manager(resolve(["serve"]).selection)
    seen = 0
    for _, plugin in pm.list_name_plugin():
        for name in dir(plugin):
            assert pm.parse_hookimpl_opts(plugin, name) == _pluggy(pm, plugin, name), name
            seen += 1
    assert seen > 100


class _Holder:
    @staticmethod
    @hookimpl
    def rt_shutdown(runtime):
        pass

    @hookimpl(tryfirst=True)
    def rt_warmup(self, config, runtime):
        pass


def test_a_module_of_every_kind_of_attribute():
    module = types.ModuleType("rt_test_plugin")

    @hookimpl(trylast=True)
    def rt_cli_start(command, config):
        pass

    def plain(x):
        return x

    module.rt_cli_start = rt_cli_start
    module.plain = plain
    module.bound = _Holder().rt_warmup  # a bound method: its function's marker
    module.static = _Holder.__dict__["rt_shutdown"]  # a staticmethod object
    module.klass = _Holder
    module.number = 3
    module.builtin = len
    pm = RtPluginManager()
    for name in ("rt_cli_start", "plain", "bound", "static", "klass", "number", "builtin"):
        assert pm.parse_hookimpl_opts(module, name) == _pluggy(pm, module, name), name
    assert pm.parse_hookimpl_opts(module, "rt_cli_start")["trylast"] is True
    assert pm.parse_hookimpl_opts(module, "bound")["tryfirst"] is True
    assert pm.parse_hookimpl_opts(module, "plain") is None
