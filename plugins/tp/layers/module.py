"""The base of every rt layer: an ``nn.Module`` whose calls no tracer elsewhere intercepts.

While any thread traces with ``torch.fx`` (AOTAutograd does, on the thread of a
background compile), ``torch.nn.Module.__call__`` is replaced process-wide by the
tracer's wrapper, and an eager step on the serving thread that calls a submodule then
fails ("module is not installed as a submodule"). rt's layers keep the original call as
their own class attribute, so the serving thread's steps never see the patch.
"""

from __future__ import annotations

from torch import nn


class Module(nn.Module):
    __call__ = nn.Module._wrapped_call_impl
