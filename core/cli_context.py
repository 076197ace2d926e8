"""What a command handler gets besides its parsed arguments: ``handler(args, cli)``."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from rt.core.config import Config
from rt.core.config_loader import parse_set_option
from rt.core.discovery import Catalog
from rt.core.pluginmanager import RtPluginManager
from rt.core.profile_registry import load_config
from rt.core.selection import Selection
from rt.core.stage import Stage

if TYPE_CHECKING:  # imported where used: the CLI reaches rt_cli_start without them
    from rt.core.runtime import Runtime


def config_option_pairs(ns: argparse.Namespace) -> list[tuple[str, Any, str]]:
    """CLI overrides from ``--set`` and ``--plugins`` as ``(key, value, flag)``."""
    pairs: list[tuple[str, Any, str]] = []
    for text in getattr(ns, "set", None) or []:
        key, value = parse_set_option(text)
        pairs.append((key, value, f"--set {text}"))
    for spec in getattr(ns, "plugins", None) or []:
        pairs.append(("plugins", spec, f"--plugins {spec}"))
    return pairs


def dotted_option_pairs(args: argparse.Namespace) -> list[tuple[str, Any, str]]:
    """Options whose ``dest`` is a config key (``--tp`` -> ``parallel.tp``)."""
    return [
        (dest, value, "--" + dest.split(".")[-1].replace("_", "-"))
        for dest, value in vars(args).items()
        if "." in dest and value is not None
    ]


@attrs.define
class CliContext:
    early: argparse.Namespace
    catalog: Catalog
    selection: Selection
    pm: RtPluginManager
    stages: list[Stage]
    # When the CLI reached rt_cli_start (time.time()): Python's start, rt's imports,
    # the entry points and the plugin manager all came before it.
    cli_start: float | None = None

    def config(
        self,
        args: argparse.Namespace,
        extra: Sequence[tuple[str, Any, str]] = (),
        profile: str | None = None,
    ) -> Config:
        """The full config: profile < --config < env < --set < dedicated flags < extra."""
        pairs = config_option_pairs(self.early) + dotted_option_pairs(args) + list(extra)
        return load_config(profile or self.early.profile, self.early.config, os.environ, pairs)

    def create_runtime(self, config: Config, exclude: Iterable[str] = ()) -> Runtime:
        """A driver runtime with its own fresh plugin manager (not the CLI's). Its
        timeline starts with a ``cli`` span: launch to ``rt_cli_start``."""
        from rt.core.startup import create_runtime
        from rt.core.timeline import Span

        runtime = create_runtime(config, self.selection, exclude=exclude)
        if self.cli_start is not None:
            span = Span(
                stage="cli",
                plugin=None,
                rank=0,
                pid=os.getpid(),
                thread="MainThread",
                start=runtime.timeline.origin,
                end=self.cli_start,
                outcome="ok",
                notes={"covers": "Python start, rt imports, entry points, plugin manager"},
            )
            runtime.timeline.add([span])
        return runtime


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
