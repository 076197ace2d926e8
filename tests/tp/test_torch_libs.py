"""Loading torch's shared libraries ahead of ``import torch`` (preload-imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rt.plugins.tp.torch_libs import (
    LIBRARIES,
    libraries_to_load,
    load_torch_libraries,
    torch_library_dir,
)

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="the libraries are loaded this way on Linux only")
def test_the_libraries_are_mapped_before_the_import_and_torch_runs_on_them():
    code = (
        "import sys\n"
        "from rt.plugins.tp.torch_libs import load_torch_libraries\n"
        "note = load_torch_libraries()\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'torch' not in sys.modules, 'loading the libraries imported torch'\n"
        "import torch\n"
        "print(note, '|', 'libtorch_python.so' in maps, '|', float(torch.ones(3).sum()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == (
        "loaded without the GIL: libtorch_global_deps.so, libtorch_python.so | True | 3.0"
    )


def test_nothing_is_loaded_once_torch_is_imported():
    import torch  # noqa: F401 - the state under test

    assert load_torch_libraries() == "torch was already imported"


def test_torch_rtld_global_mode_is_left_to_torch(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("TORCH_USE_RTLD_GLOBAL", "1")
    assert "TORCH_USE_RTLD_GLOBAL" in load_torch_libraries()


def test_the_library_folder_is_found_without_importing_torch():
    lib = torch_library_dir()
    assert lib is not None and lib.name == "lib"
    if LINUX:
        assert all((lib / name).is_file() for name in LIBRARIES)


def test_a_cuda_build_gets_only_the_cpu_library(tmp_path):
    """torch orders its CUDA libraries itself; libtorch_cpu needs none of them."""
    for name in (*LIBRARIES, "libtorch_cpu.so", "libtorch_cuda.so"):
        (tmp_path / name).write_bytes(b"")
    assert [name for name, _ in libraries_to_load(tmp_path)] == ["libtorch_cpu.so"]
    (tmp_path / "libtorch_cuda.so").unlink()
    assert [name for name, _ in libraries_to_load(tmp_path)] == list(LIBRARIES)
    (tmp_path / "libtorch_python.so").unlink()
    assert libraries_to_load(tmp_path) == []
