"""rt: an LLM serving runtime whose startup is fast, visible and swappable.

This directory is the root of the ``rt`` namespace; ``core/``, ``stages/`` and
``plugins/`` are mapped onto ``rt.core``, ``rt.stages`` and ``rt.plugins`` in
``pyproject.toml``. Importing ``rt`` loads nothing else.
"""

from __future__ import annotations

__version__ = "0.1.0"
