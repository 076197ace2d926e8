"""The template plugin and stage: declared as entry points, and run in a real stage graph.

The graph runs in-process: an empty catalog (nothing discovered), the template
plugin and stage passed as ``extra_plugins`` / ``extra_stages``, so the test does
not depend on what else is installed.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import tomllib
from pathlib import Path

import attrs
import pytest
from rt.core import Stage, hookimpl
from rt.core.config import Config, ParallelConfig, StartupConfig
from rt.core.discovery import Catalog, discover
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup

from rt_plugin_template import plugin
from rt_plugin_template.stage import STAGE

ROOT = Path(__file__).resolve().parent.parent
DIST = "rt-plugin-template"
PLUGIN_EP = ("rt.plugins", "template", "rt_plugin_template.plugin")
STAGE_EP = ("rt.stages", "template-check", "rt_plugin_template.stage:STAGE")
# Stands in for rt's built-in preload stage (same name and hook), so the graph is
# exactly these two stages whatever else is installed.
PRELOAD = Stage(name="preload", hook="rt_preload")


def _installed() -> bool:
    try:
        md.distribution(DIST)
    except md.PackageNotFoundError:
        return False
    return True


def _run(stages, tp: int = 1, plugins=(("template", plugin),)):
    """Run a graph of exactly ``stages`` with exactly ``plugins`` registered."""
    config = Config(parallel=ParallelConfig(tp=tp), startup=StartupConfig(print_timeline=False))
    runtime = create_runtime(
        config, select(Catalog((), ()), []), extra_plugins=plugins, extra_stages=stages
    )
    run_startup(runtime)
    return runtime


def test_entry_points_are_declared_in_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST
    for group, name, value in (PLUGIN_EP, STAGE_EP):
        assert project["entry-points"][group][name] == value


@pytest.mark.skipif(not _installed(), reason=f"{DIST} is not installed (pip install -e .)")
def test_installed_entry_points_load_and_the_stage_joins_only_when_selected():
    eps = md.distribution(DIST).entry_points
    declared = {(ep.group, ep.name, ep.value) for ep in eps}
    assert {PLUGIN_EP, STAGE_EP} <= declared
    catalog = discover()
    assert catalog.plugin("template").dist == DIST
    assert "template-check" not in [s.name for s in select(catalog, []).stages]
    selected = select(catalog, ["template"])
    assert "template" in selected.names
    (entry,) = [s for s in selected.stages if s.name == "template-check"]
    assert entry.load() == STAGE


def test_stage_runs_after_preload_and_reports_the_facts():
    runtime = _run([PRELOAD, STAGE])
    report = runtime.result("template-check")
    assert isinstance(report, plugin.TemplateReport)
    assert report.facts == runtime.result("preload")[0]
    assert report.facts.python == platform.python_version()
    assert report.facts.cpus == plugin.usable_cpus()
    assert report.warnings == ()

    spans = {s.stage: s for s in runtime.timeline.stage_spans()}
    check, preload = spans["template-check"], spans["preload"]
    assert (check.outcome, check.plugin) == ("ok", "template")
    assert check.start >= preload.end, "template-check needs preload"
    assert preload.notes["python"] == platform.python_version()
    assert check.notes == {"warnings": 0}


def test_too_many_ranks_for_the_cores_is_a_warning():
    cpus = plugin.usable_cpus()
    report = _run([PRELOAD, STAGE], tp=cpus + 1).result("template-check")
    assert report.warnings == (
        f"parallel.tp={cpus + 1} ranks share {cpus} usable CPU cores; "
        "on a CPU-only machine set --tp to at most the core count",
    )


def test_without_preload_the_stage_is_a_recorded_skip():
    runtime = _run([attrs.evolve(STAGE, needs=())])
    assert "template-check" not in runtime.results
    (span,) = runtime.timeline.stage_spans()
    assert span.outcome == "skipped"
    assert span.reason == "template: no environment facts: the preload stage did not run"


def test_a_selected_plugin_with_its_own_report_takes_over():
    class Override:
        @hookimpl
        def rt_template_check(self):
            return plugin.TemplateReport(facts=None, warnings=("from override",))

    # Registered before the template: without trylast=True the template, registered
    # last, would be called first and win.
    plugins = (("override", Override()), ("template", plugin))
    runtime = _run([PRELOAD, STAGE], plugins=plugins)
    assert runtime.result("template-check").warnings == ("from override",)
    spans = {s.stage: s for s in runtime.timeline.stage_spans()}
    assert spans["template-check"].plugin == "override"
