"""warmup: run a real tiny request so the first user request is not slow.

It runs in the driver after the ``ranks`` stages: the request goes through the
whole engine, so every rank warms up by serving it. When rank 0 has a process of
its own (``parallel.rank0 = "process"``) those stages are not in the driver's
graph; the warm-up then starts after ``workers`` and waits for the ranks' reports.
"""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="warmup",
    hook="rt_warmup",
    needs=(
        "tokenizer",
        "workers",
        "load-weights",
        "kv-cache",
        "compile",
        "graph-capture",
        "metadata-broadcast",
    ),
    where="driver",
    description="one real tiny request through the engine before /ready turns 200",
)
