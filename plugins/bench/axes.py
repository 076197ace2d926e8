"""Variant axes of the benchmarks: comma lists on the command line (``--tp 1,3``,
``--compile off,default``), checked before anything runs, and the ratio of two
figures as the tables print it."""

from __future__ import annotations

from collections.abc import Sequence

from rt.core import UsageError

COMPILE_MODES = ("off", "default", "background")
P2P_MODES = ("check", "cached", "table", "off")


def int_list(text: str | int, option: str) -> list[int]:
    """``"1,16"`` -> ``[1, 16]``; each a positive integer, none twice.

    Example: ``int_list("1,16", "--concurrency")``."""
    items = [t.strip() for t in str(text).split(",")]
    if not all(t.isdigit() and int(t) > 0 for t in items):
        raise UsageError(f"{option} takes positive integers separated by commas, got {text!r}")
    return _unique([int(t) for t in items], option, text)


def name_list(text: str, option: str, choices: Sequence[str] | None = None) -> list[str]:
    """``"off,background"`` -> ``["off", "background"]``; with ``choices``, each must be
    one of them.

    Example: ``name_list("off,default", "--compile", COMPILE_MODES)``."""
    values = [t.strip() for t in str(text).split(",")]
    if any(not v for v in values):
        raise UsageError(f"{option} takes names separated by commas, got {text!r}")
    if choices is not None:
        bad = [v for v in values if v not in choices]
        if bad:
            raise UsageError(
                f"{option}: unknown value {bad[0]!r}; choose from {', '.join(choices)}"
            )
    return _unique(values, option, text)


def _unique(values: list, option: str, text: str) -> list:
    if len(set(values)) != len(values):
        raise UsageError(f"{option} names a value twice: {text!r}")
    return values


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to two places, or ``None`` when either figure is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def cell(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
    """A table cell: the figure formatted, or ``-`` when there is none."""
    return "-" if value is None else f"{value:{fmt}}{suffix}"
