"""frontend: the API server comes up early, in parallel with the engine stages."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="frontend",
    hook="rt_frontend",
    needs=(),
    where="driver",
    required=True,
    description="bind the HTTP socket at once; /health live, /ready 503 until ready",
)
