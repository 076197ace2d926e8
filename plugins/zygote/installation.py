"""What a process of this installation imports, compared between a caller and a zygote.

A caller sends :func:`installation` (its Python, rt's version and folder, the installed
torch's version and location: all read without importing torch, in ~1 ms); a zygote
refuses a caller whose installation differs from its own (``fingerprint.py`` checks
the rest: what it imported has not changed on disk since).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any

from rt.core.entry_points import distribution_version

_LABELS = {
    "python": "Python",
    "executable": "the Python executable",
    "prefix": "sys.prefix",
    "rt": "rt's version",
    "rt_path": "rt's folder",
    "torch": "torch's installed version",
    "torch_path": "torch's location",
}


def _torch_origin() -> str | None:
    module = sys.modules.get("torch")
    if module is not None:
        return getattr(module, "__file__", None)
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    return spec.origin if spec is not None else None


def installation() -> dict[str, str | None]:
    """What a process of this installation imports: compared between a caller and a zygote."""
    import rt
    import rt.core

    return {
        "python": sys.version,
        "executable": os.path.realpath(sys.executable),  # python and python3 alike
        "prefix": sys.prefix,
        "rt": rt.__version__,
        "rt_path": os.path.dirname(os.path.abspath(rt.core.__file__)),
        "torch": distribution_version("torch"),
        "torch_path": _torch_origin(),
    }


def installation_difference(caller: Mapping[str, Any], zygote: Mapping[str, Any]) -> str | None:
    """Why a caller with ``caller`` may not use a zygote with ``zygote``, or None."""
    for key, label in _LABELS.items():
        if caller.get(key) != zygote.get(key):
            return f"{label} differs: {caller.get(key)!r} for the caller, {zygote.get(key)!r} in the zygote"
    return None
