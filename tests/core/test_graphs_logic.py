"""The graph-capture stage's contract and the torch-free rules every rank follows:
which size a decode batch pads to, which sizes are worth capturing, the lazy
bookkeeping (failures included), and the built-in plugin's modes over a fake target."""

from __future__ import annotations

import doctest
import random

import attrs
import pytest
from rt.core import graphs
from rt.core.errors import ConfigError
from rt.core.graphs import (
    GraphBook,
    GraphCapture,
    GraphTarget,
    decode_context_width,
    padded_size,
    plan_capture_sizes,
)
from rt.core.stage import SkipStage

from .helpers import LoadedRuntime


def test_docstring_examples():
    assert doctest.testmod(graphs).failed == 0


def test_a_batch_pads_up_to_the_next_size_and_runs_uncaptured_above_the_largest():
    sizes = (1, 2, 4, 8, 16, 32)
    assert [padded_size(sizes, n) for n in (1, 2, 3, 4, 5, 9, 17, 32)] == [
        1, 2, 4, 4, 8, 16, 32, 32,
    ]  # fmt: skip
    assert padded_size(sizes, 33) is None
    assert padded_size(sizes, 0) is None
    assert padded_size((), 1) is None


def test_capture_sizes_are_sorted_deduped_and_bounded_by_max_num_seqs():
    assert plan_capture_sizes([4, 1, 2, 2], 64) == graphs.CaptureSizes((1, 2, 4), ())
    # the smallest size above max_num_seqs still pads batches of 9..12
    assert plan_capture_sizes([1, 8, 16, 32], 12) == graphs.CaptureSizes((1, 8, 16), (32,))
    # a size equal to max_num_seqs covers every batch: nothing above it is kept
    assert plan_capture_sizes([1, 8, 16], 8) == graphs.CaptureSizes((1, 8), (16,))
    assert plan_capture_sizes([16, 32], 4) == graphs.CaptureSizes((16,), (32,))
    with pytest.raises(ConfigError, match="graphs.capture_sizes is empty.*graphs.mode=off"):
        plan_capture_sizes([], 64)


def test_context_width_is_whole_blocks_within_the_gather_budget():
    assert decode_context_width(100, 16, 4, 64) == 112  # rounded up to blocks
    assert decode_context_width(10_000, 16, 8, 1024, budget_bytes=8 * 1024 * 160) == 160
    assert decode_context_width(10_000, 16, 8, 1024, budget_bytes=1) == 16  # one block


def test_lazy_a_size_is_captured_between_steps_after_the_first_step_that_needs_it():
    book = GraphBook((1, 2, 4, 8), lazy=True)
    assert book.plan(3, fits=True) is None  # runs uncaptured; 4 waits
    assert book.plan(1, fits=True) is None  # another size needed by the same step batch
    assert book.take_waiting() == [4, 1]  # captured before the next step, largest first
    assert book.take_waiting() == []
    book.captured_ok(4)
    book.captured_ok(1)
    assert book.plan(3, fits=True) == 4  # padded: one row repeats row 0
    assert book.plan(4, fits=True) == 4
    assert book.plan(2, fits=True) is None  # 2 not captured yet: uncaptured, 2 waits
    assert book.plan(1, fits=True) == 1  # captured sizes keep replaying meanwhile
    assert book.take_waiting() == [2]
    assert book.plan(9, fits=True) is None and book.waiting == set()  # above the largest
    assert book.plan(2, fits=False) is None and book.waiting == set()  # prefill, long context
    assert book.captured == {1, 4}  # only the sizes steps met


def test_eager_book_never_queues_and_a_failed_size_runs_uncaptured_for_good():
    book = GraphBook((1, 2, 4), lazy=False)
    for size in (4, 2, 1):
        book.captured_ok(size)
    assert book.plan(3, fits=True) == 4
    assert book.capture_failed(4, "OutOfMemoryError: CUDA out of memory")
    assert not book.capture_failed(4, "again")  # noted once
    assert book.failed == {4: "OutOfMemoryError: CUDA out of memory"}
    assert book.plan(3, fits=True) is None  # nothing above 4 to pad to
    assert book.plan(2, fits=True) == 2
    assert book.take_waiting() == []


def test_a_failed_size_pads_up_to_the_next_capturable_one():
    book = GraphBook((1, 2, 4, 8), lazy=True)
    assert book.plan(3, fits=True) is None
    assert book.take_waiting() == [4]
    book.capture_failed(4, "capture failed")
    assert book.plan(3, fits=True) is None
    assert book.take_waiting() == [8]  # 4 is skipped for good: 3 sequences pad to 8
    book.captured_ok(8)
    assert book.plan(3, fits=True) == 8
    assert 4 not in book.waiting


def test_dropping_graphs_recaptures_each_size_lazily_even_after_an_eager_start():
    book = GraphBook((1, 2), lazy=False)
    book.captured_ok(1)
    book.captured_ok(2)
    book.capture_failed(2, "no")
    book.drop_all()
    assert book.captured == set() and book.lazy
    assert book.plan(1, fits=True) is None
    assert book.take_waiting() == [1]
    assert book.plan(2, fits=True) is None and book.take_waiting() == []  # still failed


def _rank_decisions(steps: list[tuple[int, bool]], fail: set[int]) -> list:
    """One rank: replay decisions and captures for a stream of (num_seqs, fits) steps;
    captures of sizes in ``fail`` fail (on every rank: the runner agrees on failures)."""
    book = GraphBook((1, 2, 4, 8, 16), lazy=True)
    log = []
    for num_seqs, fits in steps:
        for size in book.take_waiting():  # between steps
            if size in fail:
                book.capture_failed(size, "failed")
            else:
                book.captured_ok(size)
            log.append(("capture", size))
        log.append(("step", book.plan(num_seqs, fits)))
    return log


def test_every_rank_decides_alike_from_the_same_steps():
    rng = random.Random(7)
    steps = [(rng.randint(1, 20), rng.random() < 0.8) for _ in range(300)]
    ranks = [_rank_decisions(steps, fail={8}) for _ in range(4)]
    assert all(r == ranks[0] for r in ranks)
    captures = [size for kind, size in ranks[0] if kind == "capture"]
    assert len(captures) == len(set(captures))  # each size captured (or tried) once
    assert ("step", 8) not in ranks[0]


class FakeTarget:
    """A third-party engine's model: records what the stage asks of it."""

    def __init__(self, support: str | None = None, fail: tuple[int, ...] = ()) -> None:
        self.support, self.fail = support, fail
        self.calls: list = []

    def graph_support(self):
        return self.support

    def prepare_graphs(self, sizes):
        self.calls.append(("prepare", tuple(sizes)))
        return tuple(sizes)

    def capture_graph(self, size):
        self.calls.append(("capture", size))
        error = "OutOfMemoryError: CUDA out of memory" if size in self.fail else None
        return GraphCapture(size, 0.25, 1000 * size, 2000 * size, error)

    def use_graphs(self, *, lazy):
        self.calls.append(("use", lazy))

    def graph_pool_bytes(self):
        return 123


@attrs.frozen
class _Graphs:
    mode: str = "lazy"
    capture_sizes: tuple[int, ...] = (1, 2, 4, 8)


@attrs.frozen
class _Scheduler:
    max_num_seqs: int = 64


@attrs.frozen
class _Config:
    graphs: _Graphs = _Graphs()
    scheduler: _Scheduler = _Scheduler()


def test_a_target_is_recognised_by_its_methods_alone():
    assert isinstance(FakeTarget(), GraphTarget)
    assert not isinstance(object(), GraphTarget)


def test_off_no_target_and_no_cuda_are_recorded_skips():
    from rt.plugins.graphs import rt_graph_capture

    with pytest.raises(SkipStage, match="graphs.mode is off"):
        rt_graph_capture(_Config(_Graphs("off")), LoadedRuntime(FakeTarget()))
    with pytest.raises(SkipStage, match="offers no decode step"):
        rt_graph_capture(_Config(), LoadedRuntime(object()))
    reason = "no CUDA device: CUDA graphs need one"
    with pytest.raises(SkipStage, match=reason):
        rt_graph_capture(_Config(), LoadedRuntime(FakeTarget(support=reason)))


def test_eager_captures_every_size_largest_first_then_uses_them():
    from rt.plugins.graphs import rt_graph_capture

    target = FakeTarget(fail=(2,))
    config = _Config(_Graphs("eager", (8, 1, 2, 4, 128)), _Scheduler(8))
    result = rt_graph_capture(config, LoadedRuntime(target))
    assert target.calls == [
        ("prepare", (1, 2, 4, 8)),  # 128 is above max_num_seqs: dropped
        ("capture", 8), ("capture", 4), ("capture", 2), ("capture", 1),
        ("use", False),
    ]  # fmt: skip
    assert result.captured == (1, 4, 8) and result.failed == (2,)  # the engine lives on
    assert result.pool_bytes == 123


def test_lazy_captures_nothing_in_the_stage():
    from rt.plugins.graphs import rt_graph_capture

    target = FakeTarget()
    result = rt_graph_capture(_Config(), LoadedRuntime(target))
    assert target.calls == [("prepare", (1, 2, 4, 8)), ("use", True)]
    assert result.mode == "lazy" and result.captured == ()
