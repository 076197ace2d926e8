"""The stage graph: validation and a deterministic topological order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rt.core.errors import StageGraphError
from rt.core.stage import Stage


def check_graph(stages: Sequence[Stage]) -> list[Stage]:
    """Validate the graph and return the stages in a topological order.

    Errors name the culprits: duplicate names, needs on unknown stages, and the
    stages of a cycle (in cycle order).
    """
    by_name: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise StageGraphError(f"duplicate stage name {stage.name!r}: two stages register it")
        by_name[stage.name] = stage
    hooks: dict[str, str] = {}
    for stage in stages:
        if stage.hook in hooks:
            raise StageGraphError(
                f"stages {hooks[stage.hook]!r} and {stage.name!r} both use hook {stage.hook!r}"
            )
        hooks[stage.hook] = stage.name
        for need in stage.needs:
            if need not in by_name:
                raise StageGraphError(
                    f"stage {stage.name!r} needs unknown stage {need!r}; "
                    f"known stages: {', '.join(sorted(by_name))}"
                )
    # Kahn's algorithm level by level, names sorted within a level: a stable,
    # readable order (what can start first comes first).
    order: list[Stage] = []
    remaining = dict(by_name)
    while remaining:
        placed = {s.name for s in order}
        level = sorted(n for n, s in remaining.items() if all(d in placed for d in s.needs))
        if not level:
            raise StageGraphError(f"stage graph has a cycle: {' -> '.join(_find_cycle(remaining))}")
        for name in level:
            order.append(remaining.pop(name))
    return order


def _find_cycle(stages: dict[str, Stage]) -> list[str]:
    """A cycle among stages none of which can start, in cycle order."""
    path: list[str] = []
    name = min(stages)
    while name not in path:
        path.append(name)
        name = min(n for n in stages[name].needs if n in stages)
    return path[path.index(name) :] + [name]


def subgraph(stages: Sequence[Stage], keep: Iterable[str]) -> list[Stage]:
    """Only the stages named in ``keep``; needs on dropped stages are dropped too.

    Used for a TP rank (it runs only ``where="ranks"`` stages) and for commands that
    run the graph without some stage (``rt generate`` has no frontend).
    """
    import attrs

    names = set(keep)
    return [
        attrs.evolve(s, needs=tuple(n for n in s.needs if n in names))
        for s in stages
        if s.name in names
    ]
