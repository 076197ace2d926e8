"""rt.core: the public plugin API and the startup machinery.

What a third-party plugin imports::

    from rt.core import hookimpl, hookspec, Stage, SkipStage, note

Importing ``rt.core`` imports no torch, no stage and no plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each public name lives. Imported on first use (PEP 562), so that a plugin's
# ``from rt.core import hookimpl`` or the CLI's import of ``rt.core.cli`` loads only
# what it names: the scheduler, the runtime and the timeline are not on the path from
# launch to ``rt_cli_start``, where every millisecond delays the forkserver's torch.
_HOMES = {
    "hookimpl": "rt.core.markers",
    "hookspec": "rt.core.markers",
    "HookCall": "rt.core.scheduler",
    "current_call": "rt.core.scheduler",
    "SkipStage": "rt.core.stage",
    "Stage": "rt.core.stage",
    "note": "rt.core.timeline",
}


def __getattr__(name: str) -> Any:
    import importlib

    home = _HOMES.get(name) or ("rt.core.errors" if name in __all__ else None)
    if home is None:
        raise AttributeError(f"module 'rt.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


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
