"""metadata-broadcast: the driver -> ranks channel used every engine step."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="metadata-broadcast",
    hook="rt_metadata_broadcaster",
    needs=("workers",),
    where="ranks",
    description="build the step-metadata channel and verify it with a round trip",
)
