"""The ``CompileTarget`` protocol: what a compile plugin needs from an engine's loaded model.

The ``load-weights`` result of an engine that can be compiled implements it, so a
compile plugin (the built-in ``compile``, another compiler, a loader of ahead-of-time
artefacts) works with any engine without importing it::

    target = runtime.result("load-weights")
    if isinstance(target, CompileTarget):
        compiled = {f.name: my_compiler(f.fn, dynamic=f.dynamic) for f in target.step_functions()}
        for name, fn in compiled.items():
            target.warm(name, fn)  # compiles every shape the engine will call
        target.install_compiled(compiled, now=True)

Importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs


@attrs.frozen
class StepFunction:
    """One function of a rank's step that a compiler may replace.

    ``fn`` is pure apart from operators the engine keeps opaque (attention with its
    cache write, collectives). ``dynamic``: whether the first dimension of its tensor
    arguments varies between calls (one graph for all sizes >= 2); when False each
    size the engine pads its calls to is compiled as its own static graph.
    """

    name: str
    fn: Callable[..., Any]
    dynamic: bool
    sizes: tuple[int, ...] = ()  # the sizes warm() calls it with


@runtime_checkable
class CompileTarget(Protocol):
    """A rank's model that offers its step functions to a compiler."""

    def step_functions(self) -> Sequence[StepFunction]:
        """The functions to compile, in the order the engine prefers them."""
        ...

    def compile_key(self) -> dict[str, Any]:
        """What compiled artefacts of this rank depend on, as ``rt.core.compile_cache.
        CompileKey`` fields: model, model_files, code, dtype, quantization, tp, rank and
        device (a device type; the plugin names the device and adds versions)."""
        ...

    def warm(self, name: str, compiled: Callable[..., Any]) -> None:
        """Call ``compiled`` (the compiled form of step function ``name``) with every
        shape the engine will call it with, as the engine calls it, without touching
        the KV cache or the other ranks: a compiler that compiles on first call has
        compiled everything when this returns. Runs on any thread."""
        ...

    def install_compiled(self, compiled: Mapping[str, Callable[..., Any]], *, now: bool) -> None:
        """Use ``compiled`` instead of the eager functions of the same names.

        ``now``: from the next step (the compile stage ran before ``/ready``). Else the
        engine holds them until every rank has installed its own, then switches all
        ranks together between two steps (``compile.mode = "background"``).
        """
        ...


def compile_state(timeline: Any) -> tuple[bool, float]:
    """Whether rank 0 runs a compiled step, and how many seconds compiling it took,
    from the timeline: the compile stage's span (``default``: compiled before ready,
    its ``seconds`` note) or the spans a background compile reports when all ranks
    switch (plugin ``switch``)."""
    compiled, seconds = False, 0.0
    for span in timeline.spans():
        if span.stage != "compile" or span.rank != 0 or span.outcome != "ok":
            continue
        if (
            span.kind in ("stage", "hook")
            and "seconds" in span.notes
            and "background" not in span.notes
        ):
            compiled, seconds = True, float(span.notes["seconds"])
        elif span.kind == "task" and span.plugin == "compile":
            seconds = float(span.notes.get("seconds", 0.0))
        elif span.kind == "task" and span.plugin == "switch":
            compiled = True
    return compiled, seconds
