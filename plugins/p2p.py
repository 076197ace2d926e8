"""Built-in plugin ``p2p``: the GPU peer-access check, with a cache.

Engines spend up to a minute probing peer access between every GPU pair at each
start. The probe's answer depends only on the GPUs and the driver, so rt keys a
cache by the GPU UUIDs and the driver version: ``p2p.mode = "cached"`` measures
once per machine, ``"check"`` always measures, ``"off"`` skips. The stage runs in
the background, off the critical path. Without CUDA it is a recorded skip.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from rt.core import SkipStage, hookimpl, note
from rt.core.p2p import P2PTable
from rt.core.paths import rt_cache_dir


def _device_identity(torch: Any) -> tuple[list[str], str]:
    uuids = [
        str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
    ]
    driver = str(torch.cuda.driver_version()) if hasattr(torch.cuda, "driver_version") else "?"
    return uuids, driver


def _measure(torch: Any, n: int) -> tuple[tuple[bool, ...], ...]:
    return tuple(
        tuple(i == j or bool(torch.cuda.can_device_access_peer(i, j)) for j in range(n))
        for i in range(n)
    )


@hookimpl(trylast=True)
def rt_p2p_check(config: Any) -> P2PTable:
    mode = config.p2p.mode
    if mode == "off":
        raise SkipStage("p2p.mode is off")
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise SkipStage("no CUDA devices")
    uuids, driver = _device_identity(torch)
    key = hashlib.sha256(json.dumps([uuids, driver]).encode()).hexdigest()[:16]
    cache = rt_cache_dir() / "p2p" / f"{key}.json"
    if mode == "cached" and cache.is_file():
        data = json.loads(cache.read_text())
        note("cache", str(cache))
        return P2PTable(tuple(uuids), tuple(tuple(r) for r in data["access"]), "cache")
    access = _measure(torch, len(uuids))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"devices": uuids, "driver": driver, "access": access}))
    os.replace(tmp, cache)
    return P2PTable(tuple(uuids), access, "measured")
