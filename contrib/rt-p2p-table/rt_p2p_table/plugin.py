"""Plugin ``p2p-table``: answers ``rt_p2p_check`` from the hardware table.

Not ``trylast``: once selected it is asked before the built-in ``p2p`` plugin, and
when it declines (no CUDA, no matching system) the built-in measures as usual. It
answers with ``p2p.mode`` ``cached`` (the default) or ``table``; ``check`` asks for a
measurement at every start, so it steps aside, and ``off`` skips the stage.
"""

from __future__ import annotations

from typing import Any

from rt.core import SkipStage, hookimpl, note
from rt.core.p2p import P2PTable

from rt_p2p_table.table import load_systems, lookup


def visible_devices() -> tuple[list[str], list[str]]:
    """(names, UUIDs) of the visible CUDA devices; empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return [], []
    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    return [p.name for p in props], [str(p.uuid) for p in props]


@hookimpl
def rt_p2p_check(config: Any) -> P2PTable:
    if config.p2p.mode == "off":
        raise SkipStage("p2p.mode is off")
    if config.p2p.mode == "check":
        raise SkipStage("p2p.mode is check: measuring instead of the table")
    names, ids = visible_devices()
    if not names:
        raise SkipStage("no CUDA devices")
    table = lookup(load_systems(), names, ids)
    if table is None:
        raise SkipStage(f"no hardware-table entry for {len(names)} x {names[0]}; measuring instead")
    note("system", table.source)
    return table
