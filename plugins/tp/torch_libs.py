"""Load torch's shared libraries without holding the GIL, ahead of ``import torch``.

``import torch`` spends ~0.3 s of its ~1.4 s (this 2-core machine, CPU build) in the
dynamic loader: mapping ``libtorch_python`` and the libraries under it, resolving their
symbols and running their C++ static initialisers. CPython holds the GIL while it
loads an extension module, so in the driver, whose main thread is meanwhile importing
the HTTP stack and loading the tokenizer, that time is taken in turns with theirs.
ctypes releases the GIL around ``dlopen``. Loading the same files that way first, in
the preload thread, lets the loader run beside the main thread; the import that
follows finds them loaded (the loader keeps one copy of each file) and skips that work.

It loads them as torch would: ``libtorch_global_deps`` with ``RTLD_GLOBAL`` (what
``torch/__init__.py`` does first), then ``libtorch_python`` with the flags Python
imports extension modules with. A CUDA build gets only ``libtorch_cpu``, which needs
no CUDA library: torch loads its CUDA libraries in an order of its own (it preloads
some to work around wheels' library paths), which loading ``libtorch_python`` first
would change. Anything unusual (another platform, a build without these files,
``TORCH_USE_RTLD_GLOBAL``, a library that fails to load) leaves it all to
``import torch``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

LIBRARIES = ("libtorch_global_deps.so", "libtorch_python.so")
CUDA_LIBRARY = "libtorch_cuda.so"
CPU_LIBRARY = "libtorch_cpu.so"


def torch_library_dir() -> Path | None:
    """torch's ``lib`` folder, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def load_torch_libraries() -> str:
    """Load the libraries (GIL released while each loads); return what happened, for
    the startup timeline."""
    if "torch" in sys.modules:
        return "torch was already imported"
    if not sys.platform.startswith("linux"):
        return f"skipped on {sys.platform}"
    if os.environ.get("TORCH_USE_RTLD_GLOBAL"):
        return "skipped: TORCH_USE_RTLD_GLOBAL is set (torch loads them its own way)"
    lib = torch_library_dir()
    plan = libraries_to_load(lib) if lib is not None else []
    if not plan:
        return "skipped: this torch build has none of the expected libraries"
    try:
        for name, mode in plan:
            ctypes.CDLL(str(lib / name), mode=mode)
    except OSError as e:
        return f"left to import torch: {e}"
    return "loaded without the GIL: " + ", ".join(name for name, _ in plan)


def libraries_to_load(lib: Path) -> list[tuple[str, int]]:
    """(file, dlopen mode) in load order for the torch build in ``lib``; [] for none."""
    if (lib / CUDA_LIBRARY).is_file():
        return [(CPU_LIBRARY, sys.getdlopenflags())] if (lib / CPU_LIBRARY).is_file() else []
    if not all((lib / name).is_file() for name in LIBRARIES):
        return []
    return [(LIBRARIES[0], ctypes.RTLD_GLOBAL), (LIBRARIES[1], sys.getdlopenflags())]
