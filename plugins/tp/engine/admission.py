"""Whether a request could ever be served: checked once, when it is added (no torch)."""

from __future__ import annotations

from rt.core.errors import RequestError
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.sequence import Sequence


def check_fits(seq: Sequence, bm: BlockManager, max_model_len: int) -> None:
    """Raise ``RequestError`` unless ``seq`` could run with the whole KV cache to itself
    (so the scheduler never admits what it can never finish)."""
    p, max_tokens = seq.num_prompt_tokens, seq.sampling.max_tokens
    if p == 0:
        raise RequestError(f"request {seq.seq_id}: the prompt is empty; send at least one token")
    if max_tokens < 1:
        raise RequestError(
            f"request {seq.seq_id}: max_tokens is {max_tokens}; ask for at least 1 token"
        )
    if p + 1 > max_model_len:
        raise RequestError(
            f"request {seq.seq_id}: the prompt has {p} tokens, but max_model_len is "
            f"{max_model_len}, which leaves no room for an output token; shorten "
            f"the prompt to at most {max_model_len - 1} tokens or raise max_model_len"
        )
    # The last sampled token is never fed back, so its KV is never stored.
    max_kv_tokens = min(p + max_tokens, max_model_len) - 1
    need = bm.blocks_for(max_kv_tokens)
    if need > bm.num_blocks:
        raise RequestError(
            f"request {seq.seq_id}: {p} prompt tokens + up to {max_tokens} output tokens "
            f"need {need} KV-cache blocks of {bm.block_size} tokens, but the whole cache "
            f"holds {bm.num_blocks} ({bm.num_blocks * bm.block_size} tokens); lower "
            f"max_tokens, shorten the prompt, or give the KV cache more memory"
        )
