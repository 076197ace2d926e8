"""warmup: run a real tiny request so the first user request is not slow."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="warmup",
    hook="rt_warmup",
    needs=(
        "tokenizer",
        "load-weights",
        "kv-cache",
        "compile",
        "graph-capture",
        "metadata-broadcast",
    ),
    where="ranks",
    description="one real tiny request through the engine before /ready turns 200",
)
