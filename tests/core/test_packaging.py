"""The package layout: the explicit package list, the console script, ``python -m rt``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import rt

from tests.conftest import REPO, run_rt


def test_every_package_directory_is_listed_in_pyproject():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(data["tool"]["setuptools"]["packages"])
    mapping = data["tool"]["setuptools"]["package-dir"]
    found = {"rt"}
    mapped_dirs = {(REPO / folder).resolve() for folder in mapping.values()}
    for package, folder in mapping.items():
        if package == "rt":
            continue
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            if init.parent.resolve() in mapped_dirs and init.parent != root:
                continue  # another package's root (core/_rt is ``rt`` itself)
            rel = init.parent.relative_to(root).parts
            found.add(".".join((package, *rel)))
    assert found - listed == set(), (
        f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
    )
    assert listed - found == set(), f"listed but missing on disk: {sorted(listed - found)}"


def test_python_dash_m_rt_prints_the_version():
    result = run_rt("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rt {rt.__version__}"


def test_console_script_is_the_same_cli():
    # The script sits beside the interpreter running the tests (a venv's bin/).
    exe = shutil.which("rt", path=str(Path(sys.executable).parent))
    assert exe is not None, "the rt console script is not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"rt {rt.__version__}"


def test_profiles_ship_as_package_data():
    from rt.core.profile_registry import builtin_profiles

    assert {"fast-startup", "throughput", "latency"} <= set(builtin_profiles())
