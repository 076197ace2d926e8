"""model: resolve the model to serve (a folder, a cached hub id, or the default GGUF)."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="model",
    hook="rt_resolve_model",
    needs=(),
    where="driver",
    required=True,
    description="local folder, hub id from the local cache, or the default model converted once",
)
