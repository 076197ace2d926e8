"""rt's entry-point reader gives what importlib.metadata gives, without importing it."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from rt.core.entry_points import EntryPoint, distribution_version, entry_points

from tests.conftest import REPO, write_distribution

GROUPS = ("rt.plugins", "rt.stages")


def test_the_installed_entry_points_match_importlib_metadata():
    ours = {(e.group, e.name, e.value, e.dist, e.version) for e in entry_points(GROUPS)}
    theirs = {
        (ep.group, ep.name, ep.value, ep.dist.name, ep.dist.version)
        for group in GROUPS
        for ep in md.entry_points(group=group)
    }
    assert ours == theirs
    assert ("rt.plugins", "tp", "rt.plugins.tp.hooks", "rt", md.version("rt")) in ours


def test_distribution_version_matches_importlib_metadata():
    for name in ("torch", "rt", "pluggy", "typing_extensions"):
        assert distribution_version(name) == md.version(name)
    assert distribution_version("no-such-distribution-anywhere") is None


def test_the_first_distribution_of_a_name_on_the_path_wins(tmp_path: Path):
    points = {"rt.plugins": {"demo": "demo_mod"}}
    write_distribution(tmp_path / "a", "rt-demo", "2.0", {}, points)
    write_distribution(tmp_path / "b", "rt_demo", "1.0", {}, points)
    found = entry_points(GROUPS, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(e.name, e.dist, e.version) for e in found] == [("demo", "rt-demo", "2.0")]
    assert distribution_version("RT_Demo", [str(tmp_path / "a"), str(tmp_path / "b")]) == "2.0"


def test_egg_info_groups_comments_and_paths_that_are_not_folders(tmp_path: Path):
    egg = tmp_path / "src" / "rt_egg.egg-info"
    egg.mkdir(parents=True)
    egg.joinpath("PKG-INFO").write_text(
        "Metadata-Version: 1.0\nName: rt-egg\nVersion: 0.3\n\nName: x"
    )
    egg.joinpath("entry_points.txt").write_text(
        "# a comment\n[console_scripts]\negg = rt_egg:main\n\n[rt.stages]\n"
        "  warm = rt_egg.stages:WARM  \n"
    )
    paths = [str(tmp_path / "missing"), str(tmp_path / "archive.zip"), str(tmp_path / "src")]
    (tmp_path / "archive.zip").write_bytes(b"PK")
    found = entry_points(GROUPS, paths)
    assert found == [EntryPoint("warm", "rt_egg.stages:WARM", "rt.stages", "rt-egg", "0.3")]


def test_load_imports_the_module_and_follows_the_attribute_path():
    assert EntryPoint("x", "rt.core.entry_points", "g", "d", "1").load().__name__ == (
        "rt.core.entry_points"
    )
    found = EntryPoint("x", "rt.core.entry_points:EntryPoint.load", "g", "d", "1").load()
    assert found is EntryPoint.load
    with_extras = EntryPoint("x", "rt.core.entry_points:entry_points [fast]", "g", "d", "1")
    assert with_extras.load() is entry_points


def test_reaching_rt_cli_start_imports_neither_importlib_metadata_nor_the_scheduler():
    # What `rt serve` runs before rt_cli_start, where the forkserver's torch import
    # begins; everything imported here delays the first token.
    code = (
        "import os, sys\n"
        "from rt.core import cli\n"
        "early, command = cli._early_args(['serve'])\n"
        "base = cli.load_config(early.profile, early.config, os.environ, cli._early_pairs(early))\n"
        "cli.build_plugin_manager(cli.select(cli.discover(), base.plugins))\n"
        "print(' '.join(m for m in ('importlib.metadata', 'rt.core.scheduler', "
        "'rt.core.runtime', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
