"""Paged KV-cache bookkeeping: which fixed-size blocks each sequence owns (no torch).

The cache is ``num_blocks`` blocks of ``block_size`` token slots; token ``i`` of a
sequence lives in block ``seq.block_table[i // block_size]`` at offset
``i % block_size``. Blocks are never shared (no prefix caching), so a block is
either free or owned by exactly one sequence.

The free list is a stack: the blocks freed last are handed out first. The cache is
allocated untouched, so its pages cost memory only once written; reusing warm blocks
keeps a server's memory at the most blocks it ever held at once instead of growing
until churn has written every block (~0.5 GiB over minutes for the default model).
"""

from __future__ import annotations

from rt.plugins.tp.engine.sequence import Sequence


class BlockManager:
    """Hands out KV blocks to sequences and takes them back.

    Example::

        bm = BlockManager(num_blocks=4, block_size=16)
        seq = Sequence(0, list(range(20)))
        bm.can_allocate(seq)    # True: needs 2 blocks
        bm.allocate(seq)        # seq.block_table == [0, 1]
        bm.num_free_blocks      # 2
        bm.deallocate(seq)      # all 4 free again
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks > 0 and block_size > 0, (num_blocks, block_size)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives 0 first

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether the free blocks can hold every token of ``seq``."""
        return len(self._free) >= seq.num_blocks(self.block_size)

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` (holding no blocks) enough blocks for all its tokens."""
        assert not seq.block_table, f"sequence {seq.seq_id} already holds blocks"
        need = seq.num_blocks(self.block_size)
        assert need <= len(self._free), (need, len(self._free))
        seq.block_table = [self._free.pop() for _ in range(need)]

    def can_append(self, seq: Sequence) -> bool:
        """Whether ``seq`` can grow to cover its current length (one block at most)."""
        return len(self._free) >= self._missing(seq)

    def may_append(self, seq: Sequence) -> None:
        """Add a block when ``seq``'s newest token crossed into a block it lacks."""
        missing = self._missing(seq)
        assert missing <= len(self._free), (missing, len(self._free))
        seq.block_table.extend(self._free.pop() for _ in range(missing))

    def deallocate(self, seq: Sequence) -> None:
        """Free every block of ``seq``; its KV is gone, so nothing of it is cached."""
        self._free.extend(reversed(seq.block_table))  # its first block is handed out next
        seq.block_table = []
        seq.num_cached_tokens = 0

    def _missing(self, seq: Sequence) -> int:
        return max(0, seq.num_blocks(self.block_size) - len(seq.block_table))
