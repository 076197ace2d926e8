"""The pluggy markers for project ``"rt"``: what a plugin decorates its hooks with."""

from __future__ import annotations

import pluggy

PROJECT = "rt"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
