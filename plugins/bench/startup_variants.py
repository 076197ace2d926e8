"""The variants of ``rt bench startup`` and the ratios between them.

A variant is one way of starting the server. The axes ``--tp``, ``--profiles``,
``--compile`` and ``--p2p`` make a grid of groups (``tp=1 latency compile=off``: only the axes given
appear in the name); each group has its ``fast`` variant, with ``--compare`` also a
``sequential`` baseline, with ``--cold`` a ``fast cold`` one, with ``--zygote`` a
``zygote`` one (ranks forked from a running zygote; every other variant runs with
``zygote.use = off``, so a zygote left running never moves their figures). Ratios divide median
first-completion times: within a group (fast / floor, sequential / fast, cold / warm,
zygote / floor, zygote / fast) and between groups that differ on one axis (against the
axis's first value; for ``--compile`` against ``off`` when it is among them), fast
against fast and zygote against zygote.
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
    kind: str  # floor, sequential, fast, cold, zygote
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

    def server_env(self) -> dict[str, str]:
        """Environment settings of the variant's server: only the zygote variant may
        ask a zygote (``RT_ZYGOTE__USE``, below any ``--set`` in precedence)."""
        return {"RT_ZYGOTE__USE": "auto" if self.kind == "zygote" else "off"}


def build_variants(
    tps: list[int],
    profiles: list[str] | None,
    modes: list[str] | None,
    compare: bool,
    cold: bool,
    p2p_modes: list[str] | None = None,
    zygote: bool = False,
) -> list[Variant]:
    """Every variant of one invocation, in the order each round runs them. ``zygote``
    adds a ``zygote`` variant per group, and the floor, which it is measured against.

    Example: ``build_variants([1], ["latency", "throughput"], None, False, False)`` gives
    ``tp=1 latency fast`` and ``tp=1 throughput fast``."""
    variants = [Variant(FLOOR, "floor", tp=0)] if compare or zygote else []
    grid = itertools.product(tps, profiles or [None], modes or [None], p2p_modes or [None])
    for tp, profile, mode, p2p in grid:
        group = f"tp={tp}"
        group += f" {profile}" if profile is not None else ""
        group += f" compile={mode}" if mode is not None else ""
        group += f" p2p={p2p}" if p2p is not None else ""
        kinds = (["sequential"] if compare else []) + ["fast"] + (["cold"] if cold else [])
        kinds += ["zygote"] if zygote else []
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
        zygote = by_key.get((v.tp, v.profile, v.compile_mode, v.p2p_mode, "zygote"))
        if zygote is not None:
            if has_floor:
                terms.append((f"{v.group} zygote / floor", zygote.name, FLOOR))
            terms.append((f"{v.group} zygote / fast", zygote.name, v.name))
    first_tp = fast[0].tp if fast else 0
    first_profile = fast[0].profile if fast else None
    first_p2p = fast[0].p2p_mode if fast else None
    modes = [v.compile_mode for v in fast]
    base_mode = "off" if "off" in modes else (modes[0] if modes else None)
    for v in [v for v in variants if v.kind in ("fast", "zygote")]:
        suffix = " zygote" if v.kind == "zygote" else ""
        for base in (
            (first_tp, v.profile, v.compile_mode, v.p2p_mode),
            (v.tp, first_profile, v.compile_mode, v.p2p_mode),
            (v.tp, v.profile, base_mode, v.p2p_mode),
            (v.tp, v.profile, v.compile_mode, first_p2p),
        ):
            other = by_key.get((*base, v.kind))
            if other is not None and other is not v:
                label = f"{v.group}{suffix} / {other.group}{suffix}"
                if label not in {t[0] for t in terms}:
                    terms.append((label, v.name, other.name))
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
