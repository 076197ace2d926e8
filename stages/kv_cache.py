"""kv-cache: size the paged KV cache from the memory budget and allocate it."""

from __future__ import annotations

from rt.core import Stage

STAGE = Stage(
    name="kv-cache",
    hook="rt_allocate_kv_cache",
    needs=("load-weights",),
    where="ranks",
    required=True,
    description="number of KV blocks from the memory budget; allocate and bind",
)
