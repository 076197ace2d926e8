"""compile: torch.compile with a persistent cache, or off, or in the background."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="compile",
    hook="rt_compile",
    needs=("load-weights",),
    where="ranks",
    description="torch.compile: off / default / background (serve eager, swap in when ready)",
)
