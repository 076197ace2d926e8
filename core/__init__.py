"""rt.core: the public plugin API and the startup machinery.

What a third-party plugin imports::

    from rt.core import hookimpl, hookspec, Stage, SkipStage, note

Importing ``rt.core`` imports no torch, no stage and no plugin.
"""

from __future__ import annotations

from rt.core.errors import (
    ConfigError,
    EngineDead,
    ModelError,
    PluginError,
    RequestError,
    RtError,
    StageFailed,
    StageGraphError,
    UsageError,
)
from rt.core.markers import hookimpl, hookspec
from rt.core.scheduler import HookCall, current_call
from rt.core.stage import SkipStage, Stage
from rt.core.timeline import note

__all__ = [
    "ConfigError",
    "EngineDead",
    "HookCall",
    "ModelError",
    "PluginError",
    "RequestError",
    "RtError",
    "SkipStage",
    "Stage",
    "StageFailed",
    "StageGraphError",
    "UsageError",
    "current_call",
    "hookimpl",
    "hookspec",
    "note",
]
