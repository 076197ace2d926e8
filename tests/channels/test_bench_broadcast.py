"""``rt bench broadcast`` measures a channel through its plugin's hook, in real ranks."""

from __future__ import annotations

import pytest
from rt.core.errors import UsageError
from rt.plugins.bench.broadcast import channel_plugins, make_steps, run_channel


def test_object_list_figures_for_each_batch():
    (entry,) = channel_plugins(["object-list"])
    plan = {"batches": [1, 4], "iters": 20, "warmup": 5, "block_size": 16}
    rows = run_channel(entry, 2, plan, timeout=120)
    assert [(r["channel"], r["tp"], r["batch"], r["iters"]) for r in rows] == [
        ("object-list", 2, 1, 20),
        ("object-list", 2, 4, 20),
    ]
    for r in rows:
        assert 0 < r["p50_us"] <= r["p95_us"] <= r["p99_us"]


def test_unknown_or_channel_less_plugins_are_usage_errors():
    with pytest.raises(UsageError, match="no installed plugin 'nope'"):
        channel_plugins(["nope"])
    with pytest.raises(UsageError, match="does not build a channel"):
        channel_plugins(["timing"])


def test_steps_cover_a_2k_context_and_grow_a_block_every_16_steps():
    steps = list(make_steps(batch=3, count=17, block_size=16))
    assert [len(s.seqs) for s in steps] == [3] * 17
    first, last = steps[0].seqs[0], steps[-1].seqs[0]
    assert first.start_pos == 2047 and len(first.block_table) == 128
    assert len(last.block_table) == 129 and last.token_ids and last.sample
