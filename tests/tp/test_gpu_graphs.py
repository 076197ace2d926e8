"""CUDA graphs of the decode step (cuda_graphs.py) against the uncaptured eager step:
eager capture through the plugin, lazy capture of the sizes steps meet, a padded batch
(3 sequences replay the graph of 4), and graphs over a compiled step, including the
drop and lazy re-capture when a compiled step replaces the one the graphs replay.
Skipped without CUDA."""

from __future__ import annotations

import attrs
import pytest
import torch
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from .tiny_models import BlockTables, greedy_decode, random_prompt, write_checkpoint

pytestmark = pytest.mark.gpu

BLOCK_SIZE, NUM_BLOCKS, NEW_TOKENS = 4, 64, 32
SIZES = (1, 2, 4, 8)
PROMPT_LENS = (5, 11, 1)  # 3 sequences: every decode step replays the graph of 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("llama_gqa_tied", tmp_path_factory.mktemp("llama"))


def _runner(path) -> ModelRunner:
    runner = ModelRunner(path, ParallelContext.single("cuda"), torch.float32, "cuda", BLOCK_SIZE)
    runner.bind_compute_thread()
    runner.load_weights()
    runner.allocate_kv_cache(NUM_BLOCKS)
    return runner


def _decode(runner: ModelRunner, lens=PROMPT_LENS, n: int = NEW_TOKENS) -> list[list[int]]:
    vocab = runner.model_config.vocab_size
    prompts = [random_prompt(length, vocab, seed=length) for length in lens]
    return greedy_decode(runner, prompts, n, BlockTables(NUM_BLOCKS, BLOCK_SIZE))


@attrs.frozen
class _Graphs:
    mode: str
    capture_sizes: tuple[int, ...] = SIZES


@attrs.frozen
class _Scheduler:
    max_num_seqs: int = 64


@attrs.frozen
class _Config:
    graphs: _Graphs
    scheduler: _Scheduler = _Scheduler()


class _Runtime:
    def __init__(self, runner) -> None:
        self.runner = runner

    def result(self, stage: str):
        assert stage == "load-weights"
        return self.runner


def test_eager_capture_replays_the_eager_tokens(checkpoint):
    from rt.plugins.graphs import rt_graph_capture

    runner = _runner(checkpoint)
    eager, eager_one = _decode(runner), _decode(runner, (7,), 8)
    result = rt_graph_capture(_Config(_Graphs("eager")), _Runtime(runner))
    assert result.captured == SIZES and result.failed == ()
    assert result.pool_bytes > 0
    assert _decode(runner) == eager  # 3 sequences on the graph of 4
    assert runner.graphs.replays == NEW_TOKENS - 1  # every decode step after the prefill
    assert _decode(runner, (7,), 8) == eager_one  # the graph of 1
    assert runner.graphs.replays == NEW_TOKENS - 1 + 7


def test_lazy_capture_captures_the_sizes_steps_meet_between_steps(checkpoint):
    from rt.plugins.graphs import rt_graph_capture

    runner = _runner(checkpoint)
    eager, eager_one = _decode(runner), _decode(runner, (7,), 8)
    result = rt_graph_capture(_Config(_Graphs("lazy")), _Runtime(runner))
    assert result.mode == "lazy" and runner.graphs.graphs == {}
    assert _decode(runner) == eager
    assert runner.graphs.book.captured == {4}
    # the first decode step needing 4 ran uncaptured; 4 was captured before the next
    assert runner.graphs.replays == NEW_TOKENS - 2
    assert _decode(runner, (7,), 8) == eager_one
    assert runner.graphs.book.captured == {1, 4}  # only the sizes steps met
    assert runner.graphs.replays == NEW_TOKENS - 2 + 6
    spans = runner.compiled.drain_events()
    captures = [s for s in spans if s["plugin"] == "capture"]
    assert [s["notes"]["size"] for s in captures] == [4, 1]
    assert all(s["outcome"] == "ok" and s["stage"] == "graph-capture" for s in captures)
    assert captures[-1]["notes"]["pool_bytes"] > 0


def test_graphs_over_a_compiled_step_and_the_recapture_after_a_switch(checkpoint, tmp_path):
    from rt.plugins.compile import compile_now

    runner = _runner(checkpoint)
    eager = _decode(runner)
    runner.prepare_graphs(SIZES)
    for size in sorted(SIZES, reverse=True):
        assert runner.capture_graph(size).ok
    runner.use_graphs(lazy=False)
    assert _decode(runner) == eager  # graphs over the eager body
    compile_now(runner, str(tmp_path / "compile"))  # installs the compiled step now
    replays = runner.graphs.replays
    # the next step drops the graphs; the first decode step re-captures 4 over the
    # compiled step, lazily, and the steps after it replay it
    assert _decode(runner) == eager
    assert runner.graphs.captured_over is runner.compiled.active
    assert runner.graphs.book.captured == {4}
    assert runner.graphs.replays - replays == NEW_TOKENS - 2
    spans = runner.compiled.drain_events()
    drops = [s for s in spans if s["plugin"] == "drop"]
    assert len(drops) == 1 and drops[0]["notes"]["sizes"] == list(SIZES)


def test_a_failed_capture_leaves_the_size_uncaptured_and_the_engine_running(checkpoint):
    runner = _runner(checkpoint)
    eager = _decode(runner)
    runner.prepare_graphs(SIZES)
    body = runner._static_body

    def broken(input_ids, positions):
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("this step cannot be captured")
        return body(input_ids, positions)

    runner._static_body = broken  # the body the graphs capture (no compiled step)
    capture = runner.capture_graph(4)
    assert not capture.ok and "cannot be captured" in capture.error
    assert 4 in runner.graphs.book.failed and 4 not in runner.graphs.graphs
    runner._static_body = body
    for size in (8, 2, 1):
        assert runner.capture_graph(size).ok
    runner.use_graphs(lazy=False)
    assert _decode(runner) == eager  # 3 sequences pad to 8 now
    assert runner.graphs.replays == NEW_TOKENS - 1
