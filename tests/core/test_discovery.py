"""Third-party plugins and stages arrive through entry points, exactly like rt's own."""

from __future__ import annotations

import json
import sys
import time

import pytest
from rt.core.cli import main
from rt.core.config import Config, StartupConfig
from rt.core.discovery import discover
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup

from tests.conftest import write_distribution

DEMO_PLUGIN = """
from rt.core import hookimpl
from rt.core.p2p import P2PTable

@hookimpl
def rt_p2p_check():
    return P2PTable(devices=("gpu-a",), access=((True,),), source="hardware-table:demo")

@hookimpl
def rt_load_lora(runtime):
    import time
    return {"loaded_at": time.time(), "model": runtime.result("load-weights")}
"""

DEMO_STAGE = '''
from rt.core import Stage, hookspec

class LoraSpecs:
    @hookspec(firstresult=True)
    def rt_load_lora(self, config, runtime):
        """Load LoRA adapters. Example:: ..."""

STAGE = Stage(name="load-lora", hook="rt_load_lora", needs=("load-weights",),
              where="ranks", specs=LoraSpecs)
'''


@pytest.fixture
def demo(site_dir):
    write_distribution(
        site_dir,
        "rt-demo",
        "0.3",
        {"rt_demo_plugin": DEMO_PLUGIN, "rt_demo_stage": DEMO_STAGE},
        {
            "rt.plugins": {"demo": "rt_demo_plugin"},
            "rt.stages": {"load-lora": "rt_demo_stage:STAGE"},
        },
    )
    return site_dir


def _json(capsys, *args: str):
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_unselected_plugin_is_listed_but_never_imported(demo, capsys):
    rows = {r["name"]: r for r in _json(capsys, "plugins", "--json")}
    assert rows["demo"] == {
        "name": "demo",
        "distribution": "rt-demo",
        "version": "0.3",
        "kind": "third-party",
        "selected": False,
        "blocked": False,
        "hooks": None,
        "entry_point": "rt_demo_plugin",
    }
    assert rows["p2p"]["kind"] == "builtin" and rows["p2p"]["selected"]
    assert "rt_demo_plugin" not in sys.modules
    assert "rt_demo_stage" not in sys.modules
    stages = [r["name"] for r in _json(capsys, "stages", "--json")]
    assert "load-lora" not in stages, (
        "a third-party stage joins only with its distribution's plugin"
    )


def test_selected_plugin_is_loaded_and_its_stage_joins(demo, capsys):
    rows = {r["name"]: r for r in _json(capsys, "plugins", "--json", "--plugins=demo")}
    assert rows["demo"]["selected"] and rows["demo"]["hooks"] == ["rt_load_lora", "rt_p2p_check"]
    assert "rt_demo_plugin" in sys.modules
    stages = {r["name"]: r for r in _json(capsys, "stages", "--json", "--plugins=demo")}
    assert stages["load-lora"]["needs"] == ["load-weights"]
    assert stages["load-lora"]["distribution"] == "rt-demo"
    # The third-party firstresult impl is called before the built-in (trylast) one.
    assert stages["p2p-check"]["provided_by"] == ["demo", "p2p"]


def test_no_name_blocks_third_party_and_builtin(demo, capsys):
    rows = {
        r["name"]: r
        for r in _json(capsys, "plugins", "--json", "--plugins=demo,no:demo", "-p", "no:p2p")
    }
    assert not rows["demo"]["selected"] and rows["demo"]["blocked"]
    assert not rows["p2p"]["selected"] and rows["p2p"]["blocked"]
    stages = {r["name"]: r for r in _json(capsys, "stages", "--json", "--plugins=no:p2p")}
    assert stages["p2p-check"]["provided_by"] == []


def test_selected_firstresult_takes_over_and_third_party_stage_runs_in_order(demo):
    class FakeWeights:
        """Stands in for the engine so the graph can run without a model."""

        from rt.core import hookimpl

        @hookimpl
        def rt_start_workers(self):
            return "workers"

        @hookimpl
        def rt_load_weights(self):
            time.sleep(0.2)
            return "weights"

    selection = select(discover(), ["demo"])
    config = Config(startup=StartupConfig(print_timeline=False))
    rt = create_runtime(
        config,
        selection,
        extra_plugins=[("fake", FakeWeights())],
        exclude=[
            "frontend",
            "kv-cache",
            "compile",
            "graph-capture",
            "metadata-broadcast",
            "warmup",
        ],
    )
    scheduler = run_startup(rt)
    assert scheduler.wait_background(timeout=10)
    assert rt.results["p2p-check"].source == "hardware-table:demo"
    spans = {s.stage: s for s in rt.timeline.stage_spans()}
    assert spans["p2p-check"].plugin == "demo"
    assert rt.results["load-lora"]["model"] == "weights"
    assert spans["load-lora"].start >= spans["load-weights"].end


def test_unknown_plugin_name_exits_2_listing_available(demo, capsys):
    assert main(["plugins", "--plugins=dmeo"]) == 2
    err = capsys.readouterr().err
    assert "unknown plugin name: dmeo" in err
    assert "demo (rt-demo)" in err and "p2p (built-in)" in err


def test_plugin_that_fails_to_import_names_itself_and_its_distribution(site_dir, capsys):
    write_distribution(
        site_dir,
        "rt-broken",
        "1.0",
        {"rt_broken": "import does_not_exist_anywhere\n"},
        {"rt.plugins": {"broken": "rt_broken"}},
    )
    assert main(["plugins"]) == 0, "listing does not import it"
    capsys.readouterr()
    assert main(["plugins", "--plugins=broken"]) == 1
    err = capsys.readouterr().err
    assert "plugin 'broken' from distribution 'rt-broken' 1.0 failed to import" in err
    assert "does_not_exist_anywhere" in err


def test_misspelt_hook_is_caught_by_check_pending(site_dir, capsys):
    source = "from rt.core import hookimpl\n\n@hookimpl\ndef rt_lod_weights():\n    return 1\n"
    write_distribution(
        site_dir, "rt-typo", "2.0", {"rt_typo": source}, {"rt.plugins": {"typo": "rt_typo"}}
    )
    assert main(["plugins", "--plugins=typo"]) == 1
    err = capsys.readouterr().err
    assert (
        "plugin 'typo' (distribution 'rt-typo' 2.0) implements unknown hook 'rt_lod_weights'" in err
    )
    assert "did you mean 'rt_load_weights'?" in err
