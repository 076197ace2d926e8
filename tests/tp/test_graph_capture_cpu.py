"""What of the CUDA-graph path runs on CPU: the graph-capture stage's recorded skip on a
CPU engine, and the fixed-shape decode step a graph captures (static_decode.py), run
uncaptured through the runner's step path, against the eager step: same tokens,
padding that touches no other slot, a warm-up that changes nothing."""

from __future__ import annotations

import collections

import pytest
import torch
from rt.core.graphs import GraphBook, decode_context_width
from rt.core.step import SamplingParams, SeqStep, StepMetadata
from rt.plugins.tp.cuda_graphs import step_body
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext
from rt.plugins.tp.static_decode import DecodeBuffers, StaticDecodeAttention, run_static_decode

from .tiny_models import BlockTables, greedy_decode, random_prompt, write_checkpoint

BLOCK_SIZE, NUM_BLOCKS, NEW_TOKENS = 4, 96, 16
SIZES = (1, 2, 4)


class Uncaptured:
    """``CudaGraphs``' per-step path on CPU, minus the capture: the same book, buffers,
    padding and attention, with the body run instead of a graph replayed."""

    def __init__(self, runner: ModelRunner, sizes=SIZES) -> None:
        self.runner = runner
        self.book = GraphBook(sizes, lazy=False)
        for size in sizes:
            self.book.captured_ok(size)
        spec = runner.kv_spec
        width = decode_context_width(
            runner.model_config.max_model_len, runner.block_size, max(sizes),
            2 * spec.num_kv_heads * spec.head_dim * 4,
        )  # fmt: skip
        self.buffers = DecodeBuffers(max(sizes), width, runner.block_size, runner.device)
        self.layers = [StaticDecodeAttention(a) for a in runner.attention_layers]
        self.used = collections.Counter()

    def before_step(self) -> None:
        pass

    def replay(self, step: StepMetadata):
        size = self.book.plan(step.num_seqs, self.buffers.fits(step))
        if size is None:
            return None
        self.buffers.load(step, size)
        out = run_static_decode(step_body(self.runner, size), self.buffers, self.layers, size)
        self.used[size] += 1
        return out[: step.num_seqs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint("llama_gqa_tied", tmp_path_factory.mktemp("llama"))


def _runner(path) -> ModelRunner:
    runner = ModelRunner(path, ParallelContext.single(), torch.float32, "cpu", BLOCK_SIZE)
    runner.load_weights()
    runner.allocate_kv_cache(NUM_BLOCKS)
    return runner


def test_static_decode_gives_the_eager_tokens_padded_or_not(checkpoint):
    runner = _runner(checkpoint)
    vocab = runner.model_config.vocab_size
    # 3 sequences decode as a batch of 4 (one padding row), then 2 and 1 as they finish
    prompts = [random_prompt(n, vocab, seed=n) for n in (5, 11, 1)]
    eager = greedy_decode(runner, prompts, NEW_TOKENS, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    runner.graphs = Uncaptured(runner)
    static = greedy_decode(runner, prompts, NEW_TOKENS, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    assert static == eager
    assert runner.graphs.used[4] == NEW_TOKENS - 1  # every decode step after the prefill


def _decode_step(tables: BlockTables, lens: list[int], tokens: list[int]) -> StepMetadata:
    greedy = SamplingParams(temperature=0.0)
    seqs = [
        SeqStep(i, (tok,), n, tables.cover(i, n + 1), True, 0, greedy)
        for i, (n, tok) in enumerate(zip(lens, tokens, strict=True))
    ]
    return StepMetadata.from_seqs(0, seqs)


def test_padding_writes_only_the_real_rows_slots_and_warm_up_writes_nothing(checkpoint):
    runner = _runner(checkpoint)
    graphs = Uncaptured(runner)
    cache = runner.kv_cache
    torch.manual_seed(0)
    cache.normal_()  # every slot distinct, so any stray write shows
    tables = BlockTables(NUM_BLOCKS, BLOCK_SIZE, seed=1)
    lens = [6, 0, 13]  # a 1-token prompt at position 0 decodes like the others
    step = _decode_step(tables, lens, [7, 8, 9])
    written = {tables.tables[i][n // BLOCK_SIZE] * BLOCK_SIZE + n % BLOCK_SIZE
               for i, n in enumerate(lens)}  # fmt: skip
    body = step_body(runner, 4)
    with torch.inference_mode():
        before = cache.clone()
        graphs.buffers.load(step, 4)
        run_static_decode(body, graphs.buffers, graphs.layers, 4, writes=False)
        assert torch.equal(cache, before), "a warm-up changed the KV cache"
        graphs.buffers.load_neutral()
        run_static_decode(body, graphs.buffers, graphs.layers, 4, writes=False)
        assert torch.equal(cache, before), "a neutral warm-up changed the KV cache"
        graphs.buffers.load(step, 4)
        hidden = run_static_decode(body, graphs.buffers, graphs.layers, 4)
    # [2, L, blocks, block_size, Hkv, D] -> changed slots
    changed = (cache != before).flatten(4).any(-1).any(0).any(0).flatten().nonzero()
    assert set(changed.squeeze(1).tolist()) == written
    # the padding row computes row 0 (its K/V, taken from row 0, is written byte for byte)
    torch.testing.assert_close(hidden[3], hidden[0])


def test_steps_that_do_not_fit_run_uncaptured(checkpoint):
    runner = _runner(checkpoint)
    buffers = Uncaptured(runner, sizes=(1, 2)).buffers
    tables = BlockTables(NUM_BLOCKS, BLOCK_SIZE)
    assert buffers.fits(_decode_step(tables, [3, 4], [1, 2]))
    assert not buffers.fits(_decode_step(tables, [3, 4, 5], [1, 2, 3]))  # above the largest
    prefill = StepMetadata.from_seqs(0, [SeqStep(0, (1, 2), 0, tables.cover(0, 2))])
    assert not buffers.fits(prefill)
    too_long = buffers.width  # context width + 1 keys
    assert not buffers.fits(_decode_step(BlockTables(200, BLOCK_SIZE), [too_long], [1]))


def test_the_stage_is_a_recorded_skip_on_a_cpu_engine(tmp_path):
    from tests.engine_e2e.engine_helpers import start_runtime
    from tests.serving_models import write_servable_model

    model = write_servable_model(tmp_path / "model")
    runtime = start_runtime(model, ("graphs.mode", "eager"))
    try:
        spans = [s for s in runtime.timeline.spans() if s.stage == "graph-capture"]
        stage = next(s for s in spans if s.kind == "stage")
        assert stage.outcome == "skipped"
        assert stage.reason == "graphs: no CUDA device: CUDA graphs need one"
        assert any(s.kind == "hook" and s.plugin == "graphs" for s in spans)
        assert runtime.result("load-weights").graphs is None  # steps run as before
    finally:
        runtime.shutdown()
