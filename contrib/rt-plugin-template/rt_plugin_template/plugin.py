"""The ``template`` plugin: environment facts at preload, and the template stage's hook.

``rt_preload`` records facts about the process (no torch import: preload must
return fast) as notes on its timeline span and returns them; the
``template-check`` stage then reads them from ``runtime.results`` and reports
what looks wrong. Both hooks take only the arguments they use.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import attrs
from rt.core import SkipStage, hookimpl, note


@attrs.frozen
class EnvFacts:
    """What the driver process looks like at preload."""

    python: str
    implementation: str
    machine: str
    cpus: int
    torch_imported: bool


@attrs.frozen
class TemplateReport:
    """The result of the ``template-check`` stage: the facts and any warnings."""

    facts: EnvFacts | None
    warnings: tuple[str, ...] = ()


def usable_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def collect_facts() -> EnvFacts:
    return EnvFacts(
        python=platform.python_version(),
        implementation=sys.implementation.name,
        machine=platform.machine(),
        cpus=usable_cpus(),
        # Only look: importing torch here would put a second on the critical path.
        torch_imported="torch" in sys.modules,
    )


@hookimpl
def rt_preload() -> EnvFacts:
    facts = collect_facts()
    note("python", facts.python)
    note("cpus", facts.cpus)
    note("torch_imported", facts.torch_imported)
    return facts


# trylast: this is the default implementation of our own firstresult hook, so any
# other selected plugin that returns a report takes over (rt's built-ins do the same).
@hookimpl(trylast=True)
def rt_template_check(config: Any, runtime: Any) -> TemplateReport:
    # preload is a collecting hook: its result is a list, one item per plugin.
    found = [r for r in runtime.results.get("preload", ()) if isinstance(r, EnvFacts)]
    if not found:
        raise SkipStage("no environment facts: the preload stage did not run")
    facts = found[0]
    warnings = []
    if config.parallel.tp > facts.cpus:
        warnings.append(
            f"parallel.tp={config.parallel.tp} ranks share {facts.cpus} usable CPU cores; "
            "on a CPU-only machine set --tp to at most the core count"
        )
    note("warnings", len(warnings))
    return TemplateReport(facts=facts, warnings=tuple(warnings))
