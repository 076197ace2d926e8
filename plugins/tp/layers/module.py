"""The base of every rt layer: an ``nn.Module`` whose call is its ``forward``, nothing else.

``nn.Module.__call__`` runs hook machinery on every call (global and per-module hook
checks, the tracing-state lookup): ~10 us a call between the decode step's weight
passes, over ~330 layer calls a token. rt's layers register no hooks, so a layer's
class makes its ``forward`` its ``__call__`` (no frame in between; an instance's own
``forward`` attribute is not consulted): a SmolLM2 int4 decode step took ~6% less at
TP=1 and ~7-15% less for one rank's share at TP=3 (best of 3 rounds of 32 tokens,
in-process, 2-core AMD EPYC). Dynamo traces the call like any Python function.

It also keeps the serving thread clear of ``torch.fx``: while any thread traces with
it (AOTAutograd does, on the thread of a background compile), ``nn.Module.__call__`` is
replaced process-wide by the tracer's wrapper, and an eager step on the serving thread
that called a submodule through it would fail ("module is not installed as a
submodule"). A module hook registered on an rt layer is never called.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Module(nn.Module):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A layer's call *is* its forward: no frame in between (~3 us a call, ~340
        # calls a decode step). A class that defines its own __call__ keeps it.
        super().__init_subclass__(**kwargs)
        if "__call__" not in cls.__dict__:
            cls.__call__ = cls.forward

    # ``self.qkv_proj``, ``self.weight``: nn.Module keeps submodules, parameters and
    # buffers in its own tables, so reading one misses the instance dict and runs
    # ``nn.Module.__getattr__``, a Python call (~850 a SmolLM2 decode step). rt's layers
    # also keep each in the instance dict, where Python finds it first: a step took ~5%
    # less CPU (median of 9 interleaved rounds of 32 tokens, one thread, 2-core EPYC).
    # Every registration goes through the methods below or ``loader.replace_parameters``,
    # which keep the copy in step (``mirrors_in_step`` checks).
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        _mirror(self, name)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        super().register_parameter(name, param)
        _mirror(self, name)

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        super().register_buffer(name, tensor, persistent)
        _mirror(self, name)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        super().add_module(name, module)
        _mirror(self, name)

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        self.__dict__.pop(name, None)


_TABLES = ("_parameters", "_modules", "_buffers")


def _mirror(module: nn.Module, name: str) -> None:
    """Copy ``module``'s registered ``name`` (if it is one) into its instance dict."""
    for table in _TABLES:
        registered = module.__dict__.get(table)
        if registered is not None and name in registered:
            module.__dict__[name] = registered[name]
            return


def set_registered(module: nn.Module, table: str, name: str, value: Any) -> None:
    """``module.<table>[name] = value`` (``table``: "_parameters", "_modules" or
    "_buffers"), keeping an rt layer's instance-dict copy in step."""
    getattr(module, table)[name] = value
    if isinstance(module, Module):
        _mirror(module, name)


def mirrors_in_step(model: nn.Module) -> list[str]:
    """The submodules, parameters and buffers of ``model``'s rt layers whose
    instance-dict copy is missing or not the registered object (a test's check)."""
    wrong = []
    for path, module in model.named_modules():
        if not isinstance(module, Module):
            continue
        for table in _TABLES:
            for name, value in getattr(module, table).items():
                if module.__dict__.get(name, _MISSING) is not value:
                    wrong.append(f"{path}.{name}" if path else name)
    return wrong


_MISSING = object()
