"""GPU peer access: the record every ``rt_p2p_check`` implementation returns, and what
an engine makes of it (the NCCL settings of a node whose GPUs cannot all reach each other).

The ``p2p-check`` stage runs in the background. An engine whose collectives go through
NCCL waits for it (:func:`wait_for_p2p_table`) before its first collective, since NCCL
reads its settings once, when the first communicator forms; the ranks of a node then
agree on one setting (:func:`nccl_p2p_plan`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

Pair = tuple[int, int]

# NCCL settings that decide whether it uses peer-to-peer transport. One set by the user
# (in the environment or by the launcher) is left alone.
NCCL_P2P_VARIABLES = ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL")
P2P_STAGE = "p2p-check"


def _matrix(value: Iterable[Iterable[bool]]) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(bool(v) for v in row) for row in value)


@attrs.frozen
class P2PTable:
    """Which GPU pairs can access each other's memory directly.

    ``devices`` are GPU UUIDs in CUDA device order; ``access[i][j]`` tells whether
    device ``i`` can read device ``j``'s memory. ``source`` says how the table was
    obtained ("measured", "cache", "hardware-table:<name>"). ``failures`` holds, for
    pairs found without access, why: ``(i, j, reason)``.

    Example::

        table = P2PTable(("GPU-a", "GPU-b"), ((True, False), (False, True)), "measured")
        table.blocked_pairs()  # ((0, 1),)
    """

    devices: tuple[str, ...] = attrs.field(converter=tuple)
    access: tuple[tuple[bool, ...], ...] = attrs.field(converter=_matrix)
    source: str
    failures: tuple[tuple[int, int, str], ...] = attrs.field(default=(), converter=tuple)

    @access.validator
    def _square(self, attribute: attrs.Attribute, value: tuple[tuple[bool, ...], ...]) -> None:
        n = len(self.devices)
        if len(value) != n or any(len(row) != n for row in value):
            shape = f"{len(value)}x{len(value[0]) if value else 0}"
            raise ValueError(f"P2PTable of {n} devices needs a {n}x{n} access matrix, got {shape}")

    def can_access(self, i: int, j: int) -> bool:
        return i == j or self.access[i][j]

    @property
    def all_pairs(self) -> bool:
        n = len(self.devices)
        return all(self.can_access(i, j) for i in range(n) for j in range(n))

    def blocked_pairs(self, among: Iterable[int] | None = None) -> tuple[Pair, ...]:
        """Pairs ``(i, j)``, ``i < j``, where either direction lacks access; only among
        the device indices ``among`` when given (indices past the table are ignored)."""
        n = len(self.devices)
        idx = sorted({d for d in among if 0 <= d < n}) if among is not None else range(n)
        return tuple(
            (i, j)
            for a, i in enumerate(idx)
            for j in idx[a + 1 :]
            if not (self.can_access(i, j) and self.can_access(j, i))
        )

    def reason(self, i: int, j: int) -> str | None:
        """Why the pair lacks access, where the check said so."""
        for a, b, why in self.failures:
            if {a, b} == {i, j}:
                return why
        return None


def nccl_environment(blocked: Sequence[Pair]) -> dict[str, str]:
    """The NCCL settings for ranks whose GPUs include the ``blocked`` pairs.

    NCCL cannot leave out single pairs: one pair without peer access means no P2P
    transport at all (NCCL then goes through shared host memory).

    Example: ``nccl_environment([(0, 1)])`` -> ``{"NCCL_P2P_DISABLE": "1"}``.
    """
    return {"NCCL_P2P_DISABLE": "1"} if blocked else {}


@attrs.frozen
class RankP2P:
    """What one rank tells the others before NCCL starts: its node, its GPU, and the
    pairs its table (of every GPU the node shows) finds without access (``None``: no
    table)."""

    host: str
    device: int
    blocked: tuple[Pair, ...] | None


@attrs.frozen
class NcclP2PPlan:
    """The NCCL settings one node's ranks apply, and why (for the timeline)."""

    env: dict[str, str]
    devices: tuple[int, ...]
    blocked: tuple[Pair, ...]
    reason: str


def nccl_p2p_plan(ranks: Sequence[RankP2P], host: str) -> NcclP2PPlan:
    """One plan for every rank on ``host``: the union of their tables' blocked pairs,
    among the GPUs those ranks use. Every rank of the node computes the same plan from
    the same list, so they agree even if their tables differ.

    Example::

        ranks = [RankP2P("a", 0, ((0, 1),)), RankP2P("a", 1, ((0, 1),))]
        nccl_p2p_plan(ranks, "a").env  # {"NCCL_P2P_DISABLE": "1"}
    """
    local = [r for r in ranks if r.host == host]
    devices = tuple(sorted({r.device for r in local}))
    tables = [r.blocked for r in local if r.blocked is not None]
    if len(devices) < 2:
        return NcclP2PPlan({}, devices, (), "one GPU on this node: no peer traffic")
    if not tables:
        return NcclP2PPlan({}, devices, (), "no P2P table: NCCL keeps its defaults")
    used = set(devices)
    blocked = tuple(
        sorted({p for t in tables for p in t if p[0] in used and p[1] in used and p[0] != p[1]})
    )
    if not blocked:
        return NcclP2PPlan({}, devices, (), f"GPUs {_names(devices)} reach each other")
    pairs = ", ".join(f"{i}-{j}" for i, j in blocked)
    return NcclP2PPlan(
        nccl_environment(blocked), devices, blocked, f"no peer access between GPUs {pairs}"
    )


def _names(devices: Sequence[int]) -> str:
    return ",".join(str(d) for d in devices)


_DONE = ("ok", "skipped", "failed", "cancelled")


def wait_for_p2p_table(
    runtime: Any, timeout_s: float, poll_s: float = 0.01
) -> tuple[P2PTable | None, str]:
    """Wait for this runtime's ``p2p-check`` stage; return its table (``None`` when the
    stage is absent, skipped, failed, still running at ``timeout_s``, or returned
    something else) and a line saying which."""
    deadline = time.monotonic() + timeout_s
    state = runtime.stage_state.get(P2P_STAGE)
    if state is None:
        return None, "no p2p-check stage in this startup graph"
    while state not in _DONE:
        if time.monotonic() >= deadline:
            return None, f"p2p-check still {state} after {timeout_s:.0f} s"
        time.sleep(poll_s)
        state = runtime.stage_state.get(P2P_STAGE)
    if state != "ok":
        why = _stage_reason(runtime)
        return None, f"p2p-check {state}" + (f": {why}" if why else "")
    table = runtime.results.get(P2P_STAGE)
    if not isinstance(table, P2PTable):
        return None, f"p2p-check returned {type(table).__name__}, not a P2PTable"
    return table, f"p2p-check table ({table.source})"


def _stage_reason(runtime: Any) -> str | None:
    for span in runtime.timeline.stage_spans():
        if span.stage == P2P_STAGE and span.reason:
            return span.reason
    return None
