"""Built-in plugin ``p2p``: which GPU pairs can reach each other's memory, by real copies.

Serving engines test peer access at every start by copying between every GPU pair in a
subprocess (vLLM's ``gpu_p2p_access_check``; up to a minute on an 8-GPU box), because a
driver can claim peer access that does not work. This plugin runs the same kind of
test (``probe.py``: a copy from GPU i to GPU j and back, values checked, in a
subprocess so no CUDA context leaks into the rank) and caches the answer under
``$RT_CACHE_DIR/p2p/``, keyed by the GPU UUIDs, the driver version and the topology
(``identity.py``). ``p2p.mode``:

* ``check``: measure at every start (once per node: the ranks share it);
* ``cached``: measure once per key, then read the cache;
* ``table``: a hardware-table plugin (``rt-p2p-table``) answers; when none does, as
  ``cached``;
* ``off``: a recorded skip.

The stage runs in the background. The engine waits for it only where it matters: the
TP engine on CUDA at TP >= 2, before NCCL's first communicator forms, turns a pair
without access into ``NCCL_P2P_DISABLE=1`` (``rt.core.p2p.nccl_p2p_plan``). Without
CUDA the stage is a recorded skip, "no CUDA devices".
"""

from __future__ import annotations

import time
from typing import Any

from rt.core import SkipStage, hookimpl, note
from rt.core.p2p import P2PTable
from rt.core.paths import rt_cache_dir


@hookimpl(trylast=True)
def rt_p2p_check(config: Any, runtime: Any) -> P2PTable:
    mode = config.p2p.mode
    if mode == "off":
        raise SkipStage("p2p.mode is off")
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise SkipStage("no CUDA devices")
    from rt.plugins.p2p.check import check_access
    from rt.plugins.p2p.identity import gpu_identity

    identity = gpu_identity(torch)
    note("gpus", len(identity.uuids))
    note("driver", identity.driver)
    if mode == "table":
        note("table", "no hardware-table plugin answered: cached measurement")
    # A measurement made after this process was launched belongs to this start.
    since = runtime.timeline.origin if runtime is not None else time.time()
    checked = check_access(identity, mode, rt_cache_dir() / "p2p", since)
    table = checked.table
    note("cache", f"{checked.cache} {checked.path.name}")
    if checked.seconds is not None:
        note("probe_s", checked.seconds)
        note("probes", checked.probes)
    note("no_access", describe_blocked(table))
    return table


def describe_blocked(table: P2PTable) -> str:
    """``"none"``, or the pairs without access and why: ``"0-1 (cudaDeviceCanAccessPeer: no ...)"``."""
    blocked = table.blocked_pairs()
    if not blocked:
        return "none"
    parts = []
    for i, j in blocked:
        why = table.reason(i, j)
        parts.append(f"{i}-{j}" + (f" ({why})" if why else ""))
    return ", ".join(parts)
