"""The ``Stage`` record: one node of the startup graph."""

from __future__ import annotations

from typing import Literal

import attrs

Where = Literal["driver", "ranks"]


def _stage_name(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value or not all(c.isalnum() or c == "-" for c in value) or value != value.lower():
        raise ValueError(f"stage name must be lower-case letters, digits and '-', got {value!r}")


def _hook_name(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value.startswith("rt_"):
        raise ValueError(f"stage hook names start with 'rt_', got {value!r}")


@attrs.frozen
class Stage:
    """A startup stage: which hook it calls, what it waits for, where it runs.

    Example, a third-party stage that brings its own hook::

        class LoraSpecs:
            @hookspec(firstresult=True)
            def rt_load_lora(self, config, runtime):
                "Load LoRA adapters; return them."

        STAGE = Stage(name="load-lora", hook="rt_load_lora",
                      needs=("load-weights",), where="ranks", specs=LoraSpecs)

    ``where="ranks"`` runs on every TP rank (rank 0 included); ``"driver"`` only in
    the driver process. A ``background`` stage may still run when the runtime is
    declared ready. A ``required`` stage with no implementation (or whose
    firstresult hook returns nothing) fails startup; an optional one is skipped.
    """

    name: str = attrs.field(validator=_stage_name)
    hook: str = attrs.field(validator=_hook_name)
    needs: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    where: Where = attrs.field(
        default="driver", validator=attrs.validators.in_(("driver", "ranks"))
    )
    background: bool = False
    required: bool = False
    specs: object | None = None
    description: str = ""


class SkipStage(Exception):
    """Raised by a hookimpl to record its stage (or its own part) as skipped, with a reason.

    Example::

        @hookimpl
        def rt_graph_capture(config):
            raise SkipStage("no CUDA device: CUDA graphs need one")
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
