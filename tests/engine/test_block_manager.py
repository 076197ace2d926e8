from __future__ import annotations

import pytest
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.sequence import Sequence


def _seq(seq_id: int, num_tokens: int) -> Sequence:
    return Sequence(seq_id, list(range(1, num_tokens + 1)))


@pytest.mark.parametrize(("num_tokens", "blocks"), [(1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_num_blocks_rounds_up(num_tokens: int, blocks: int) -> None:
    assert _seq(0, num_tokens).num_blocks(4) == blocks
    assert BlockManager(8, 4).blocks_for(num_tokens) == blocks


def test_allocate_and_deallocate_account_for_every_block() -> None:
    bm = BlockManager(num_blocks=5, block_size=4)
    a, b = _seq(0, 9), _seq(1, 4)
    assert bm.can_allocate(a)
    bm.allocate(a)
    assert len(a.block_table) == 3 and bm.num_used_blocks == 3 and bm.num_free_blocks == 2
    bm.allocate(b)
    assert len(b.block_table) == 1
    assert set(a.block_table).isdisjoint(b.block_table)
    assert bm.num_free_blocks == 1

    c = _seq(2, 5)
    assert not bm.can_allocate(c)  # needs 2, 1 free

    a.num_cached_tokens = 9
    bm.deallocate(a)
    assert a.block_table == [] and a.num_cached_tokens == 0
    assert bm.num_free_blocks == 4 and bm.num_used_blocks == 1
    assert bm.can_allocate(c)
    bm.allocate(c)
    assert set(c.block_table).isdisjoint(b.block_table)
    bm.deallocate(b)
    bm.deallocate(c)
    assert bm.num_free_blocks == 5


def test_may_append_adds_a_block_only_when_crossing_a_boundary() -> None:
    bm = BlockManager(num_blocks=3, block_size=4)
    seq = _seq(0, 3)
    bm.allocate(seq)
    assert len(seq.block_table) == 1
    blocks_seen = []
    for token in range(100, 109):  # grow from 3 to 12 tokens, one decode at a time
        seq.output_token_ids.append(token)
        assert bm.can_append(seq)
        bm.may_append(seq)
        blocks_seen.append(len(seq.block_table))
        assert len(seq.block_table) == seq.num_blocks(4)
    # lengths 4..12: a new block at 5 and at 9
    assert blocks_seen == [1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert bm.num_free_blocks == 0
    assert len(set(seq.block_table)) == 3

    seq.output_token_ids.append(999)  # 13 tokens: needs a 4th block, none left
    assert not bm.can_append(seq)


def test_can_append_is_free_when_no_new_block_is_needed() -> None:
    bm = BlockManager(num_blocks=1, block_size=4)
    seq = _seq(0, 2)
    bm.allocate(seq)
    assert bm.num_free_blocks == 0
    seq.output_token_ids.append(7)
    assert bm.can_append(seq)  # 3 tokens still fit the one block
    bm.may_append(seq)
    assert len(seq.block_table) == 1


def test_freed_blocks_are_reused() -> None:
    bm = BlockManager(num_blocks=2, block_size=2)
    for i in range(10):
        seq = _seq(i, 4)
        assert bm.can_allocate(seq)
        bm.allocate(seq)
        assert sorted(seq.block_table) == [0, 1]
        bm.deallocate(seq)
    assert bm.num_free_blocks == 2


def test_blocks_freed_last_are_handed_out_first():
    # A server's memory stays at the most blocks in use at once: freed (written, so
    # resident) blocks are reused before untouched ones.
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = Sequence(0, list(range(8))), Sequence(1, list(range(4)))
    bm.allocate(a)
    bm.allocate(b)
    assert a.block_table == [0, 1] and b.block_table == [2]
    for _ in range(5):
        bm.deallocate(a)
        bm.allocate(a)
        assert a.block_table == [0, 1]  # never 3..7: they stay untouched
