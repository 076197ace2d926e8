"""preload: start imports, a forkserver and page-cache prefetch in the background."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="preload",
    hook="rt_preload",
    needs=(),
    where="driver",
    description="background imports, forkserver pre-spawn, page-cache prefetch",
)
