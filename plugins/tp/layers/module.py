"""The base of every rt layer: an ``nn.Module`` whose call is its ``forward``, nothing else.

``nn.Module.__call__`` runs hook machinery on every call (global and per-module hook
checks, the tracing-state lookup): ~10 us a call between the decode step's weight
passes, over ~330 layer calls a token. rt's layers register no hooks, so they call
``forward`` directly: a SmolLM2 int4 decode step took ~6% less at TP=1 and ~7-15%
less for one rank's share at TP=3 (best of 3 rounds of 32 tokens, in-process, 2-core
AMD EPYC). Dynamo traces the call like any Python function.

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
