"""rt.core <- rt.stages <- rt.plugins; plugins never import each other; no torch on
the CLI's inspection paths."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TORCH_FREE_COMMANDS = [["--help"], ["plugins"], ["stages"], ["profiles"], ["profiles", "latency"]]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_import_time) for every import in a file; imports inside a
    function body run only when called."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, top))
            walk(child, inner)

    walk(tree, True)
    return found


def _files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_core_imports_no_stage_plugin_or_torch_at_import_time():
    for path in _files("core"):
        for module, top in _imports(path):
            assert not module.startswith(("rt.stages", "rt.plugins")), f"{path} imports {module}"
            if top:
                assert module.split(".")[0] not in ("torch", "transformers"), (
                    f"{path} imports {module}"
                )


def test_stages_import_only_core():
    for path in _files("stages"):
        for module, _ in _imports(path):
            assert not module.startswith("rt.plugins"), f"{path} imports {module}"


def _plugin_of(path: Path) -> str:
    rel = path.relative_to(REPO / "plugins").parts
    return rel[0].removesuffix(".py")


def test_plugins_never_import_each_other():
    for path in _files("plugins"):
        own = _plugin_of(path)
        for module, _ in _imports(path):
            if module.startswith("rt.plugins."):
                other = module.split(".")[2]
                assert other == own, f"{path} (plugin {own}) imports plugin {other}: {module}"


@pytest.mark.parametrize("args", TORCH_FREE_COMMANDS, ids=" ".join)
def test_inspection_commands_do_not_import_torch(args):
    code = (
        "import sys\n"
        "from rt.core.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_import_rt_core_is_light():
    code = "import sys, rt.core; print(sorted(m for m in ('torch','transformers','rt.stages','rt.plugins') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
