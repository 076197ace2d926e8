"""Import modules with Python's cyclic garbage collector paused.

``import torch`` creates a few hundred thousand objects (functions, classes, their
dicts) and frees almost none of them. With the collector on, every 700 new objects
start a young collection and, as the heap grows, full collections walk everything
imported so far; all of it survives. On this 2-core machine that is ~0.15 s of a
~1.4 s import (``python -c "import gc; gc.disable(); import torch"`` against the plain
import, taking turns). Pausing the collector for the import loses nothing: what the
import leaves as garbage is collected once the collector is on again.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the collector inside the block; leave it as it was found after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_modules(names: tuple[str, ...] | list[str]) -> None:
    """Import ``names`` in order with the collector paused."""
    with gc_paused():
        for name in names:
            importlib.import_module(name)
