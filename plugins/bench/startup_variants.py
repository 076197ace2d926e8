"""The variants of ``rt bench startup`` and the ratios between them.

A variant is one way of starting the server. The axes ``--tp``, ``--profiles``,
``--compile`` and ``--p2p`` make a grid of groups (``tp=1 latency compile=off``: only the axes given
appear in the name); each group has its ``fast`` variant, with ``--compare`` also a
``sequential`` baseline, with ``--cold`` a ``fast cold`` one. Ratios divide median
first-completion times: within a group (fast / floor, sequential / fast, cold / warm)
and between groups that differ on one axis (against the axis's first value; for
``--compile`` against ``off`` when it is among them).
"""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import attrs

FLOOR = "floor: python -c 'import torch'"
# The baseline the fast path is measured against: what an engine without rt's fast path
# does at every start. Stages run one at a time (preload work inline, nothing overlaps)
# and the checkpoint is loaded and processed again instead of mapping prepared weights.
BASELINE = [
    "--sequential-startup",
    "--set",
    "model.prepared_cache=false",
    "--set",
    "parallel.rank0=driver",  # one process, as an engine without rt's fast path
]


@attrs.frozen
class Variant:
    name: str
    kind: str  # floor, sequential, fast, cold
    group: str = ""  # the name without the kind: "tp=1 latency"
    tp: int = 1
    profile: str | None = None  # from --profiles; None: the invocation's own
    compile_mode: str | None = None  # from --compile; None: what the config says
    p2p_mode: str | None = None  # from --p2p; None: what the config says

    def server_args(self, extra: list[str]) -> list[str]:
        """``rt serve`` arguments beyond the invocation's own ``extra``."""
        args = list(extra)
        if self.profile is not None:
            args += ["--profile", self.profile]
        if self.compile_mode is not None:  # after the --set options in extra: it wins
            args += ["--set", f"compile.mode={self.compile_mode}"]
        if self.p2p_mode is not None:
            args += ["--set", f"p2p.mode={self.p2p_mode}"]
        if self.kind == "sequential":
            args += BASELINE
        return args


def build_variants(
    tps: list[int],
    profiles: list[str] | None,
    modes: list[str] | None,
    compare: bool,
    cold: bool,
    p2p_modes: list[str] | None = None,
) -> list[Variant]:
    """Every variant of one invocation, in the order each round runs them.

    Example: ``build_variants([1], ["latency", "throughput"], None, False, False)`` gives
    ``tp=1 latency fast`` and ``tp=1 throughput fast``."""
    variants = [Variant(FLOOR, "floor", tp=0)] if compare else []
    grid = itertools.product(tps, profiles or [None], modes or [None], p2p_modes or [None])
    for tp, profile, mode, p2p in grid:
        group = f"tp={tp}"
        group += f" {profile}" if profile is not None else ""
        group += f" compile={mode}" if mode is not None else ""
        group += f" p2p={p2p}" if p2p is not None else ""
        kinds = (["sequential"] if compare else []) + ["fast"] + (["cold"] if cold else [])
        for kind in kinds:
            name = f"{group} {'fast cold' if kind == 'cold' else kind}"
            variants.append(Variant(name, kind, group, tp, profile, mode, p2p))
    return variants


def ratio_terms(variants: list[Variant]) -> list[tuple[str, str, str]]:
    """(label, numerator variant, denominator variant) for each ratio the run can give."""
    by_key = {(v.tp, v.profile, v.compile_mode, v.p2p_mode, v.kind): v for v in variants}
    fast = [v for v in variants if v.kind == "fast"]
    has_floor = any(v.kind == "floor" for v in variants)
    terms = []
    for v in fast:
        if has_floor:
            terms.append((f"{v.group} fast / floor", v.name, FLOOR))
        for kind, label in (("sequential", "sequential / fast"), ("cold", "cold / warm")):
            other = by_key.get((v.tp, v.profile, v.compile_mode, v.p2p_mode, kind))
            if other is not None:
                terms.append((f"{v.group} {label}", other.name, v.name))
    first_tp = fast[0].tp if fast else 0
    first_profile = fast[0].profile if fast else None
    first_p2p = fast[0].p2p_mode if fast else None
    modes = [v.compile_mode for v in fast]
    base_mode = "off" if "off" in modes else (modes[0] if modes else None)
    for v in fast:
        for base in (
            (first_tp, v.profile, v.compile_mode, v.p2p_mode),
            (v.tp, first_profile, v.compile_mode, v.p2p_mode),
            (v.tp, v.profile, base_mode, v.p2p_mode),
            (v.tp, v.profile, v.compile_mode, first_p2p),
        ):
            other = by_key.get((*base, "fast"))
            if other is not None and other is not v:
                terms.append((f"{v.group} / {other.group}", v.name, other.name))
    return terms


def ratios(summaries: dict[str, Any], variants: list[Variant]) -> dict[str, float]:
    """Ratios of the variants' median first-completion times."""
    return {
        label: round(summaries[a]["first_completion_s"] / summaries[b]["first_completion_s"], 2)
        for label, a, b in ratio_terms(variants)
    }


def paired_ratios(runs: dict[str, list[dict[str, Any]]], variants: list[Variant]) -> dict:
    """The median over rounds of each round's ratio. Every round runs each variant once,
    so a machine whose speed drifts between rounds moves both sides of a round alike:
    a check on the ratio of medians when the machine is noisy."""
    key = "first_completion_s"
    out = {}
    for label, a, b in ratio_terms(variants):
        pairs = zip(runs[a], runs[b], strict=True)  # every variant ran once per round
        out[label] = round(statistics.median(x[key] / y[key] for x, y in pairs), 2)
    return out
