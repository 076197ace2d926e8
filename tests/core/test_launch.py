"""The ``rt`` executable offers each command to the ``rt.launchers`` entry points first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from rt.core import entry_points as entry_points_module
from rt.core import launch
from rt.core.entry_points import EntryPoint

from tests.conftest import REPO


def _answer_3(argv: list[str]) -> int | None:
    return 3 if argv[:1] == ["serve"] else None


def _decline(argv: list[str]) -> None:
    return None


def _broken(argv: list[str]) -> int:
    raise RuntimeError("no socket today")


def _points(*specs: tuple[str, str]) -> list[EntryPoint]:
    group = launch.LAUNCHER_GROUP
    return [EntryPoint(name, f"{__name__}:{attr}", group, "d", "1") for name, attr in specs]


@pytest.fixture
def installed(monkeypatch):
    def install(*specs: tuple[str, str]) -> None:
        monkeypatch.setattr(entry_points_module, "entry_points", lambda groups: _points(*specs))

    return install


def test_the_first_launcher_that_runs_the_command_gives_the_exit_code(installed):
    installed(("b", "_answer_3"), ("a", "_decline"))
    assert launch.launched(["serve", "m"]) == 3
    assert launch.launched(["generate", "m", "hi"]) is None


def test_a_broken_launcher_is_reported_and_skipped(installed, capsys):
    installed(("a", "_broken"), ("b", "_answer_3"))
    assert launch.launched(["serve"]) == 3
    err = capsys.readouterr().err
    assert "launcher 'a' from d 1 failed (RuntimeError: no socket today)" in err
    assert "running the command in this process" in err


def test_declining_costs_no_import_of_the_cli_attrs_or_pluggy():
    # Every `rt` command goes through the launchers first: without a zygote they must
    # decline on a file check, importing nothing the CLI would not import anyway later.
    code = (
        "import sys\n"
        "from rt.core.launch import launched\n"
        "assert launched(['serve', '--port', '0']) is None\n"
        "print(' '.join(m for m in ('rt.core.cli', 'attrs', 'pluggy', 'torch', "
        "'rt.plugins.zygote.call', 'rt.plugins.zygote.plugin') if m in sys.modules))\n"
    )
    env_cache = {"RT_CACHE_DIR": str(REPO / ".no-such-cache-dir")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, **env_cache},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
