"""Where rt keeps what it makes once and reuses: converted models, P2P tables, caches."""

from __future__ import annotations

import os
from pathlib import Path


def rt_cache_dir() -> Path:
    """``$RT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rt``, else ``~/.cache/rt``."""
    explicit = os.environ.get("RT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rt"
