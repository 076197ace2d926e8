"""The scheduler driven by a fake model whose only memory is a paged KV cache.

The fake model writes every token it computes into the slot the step's block table
names, and predicts the next token from the history it reads back through the
block table. So a wrong block table, a wrong ``start_pos``, a block shared by two
live sequences or a lost token after preemption all change the generated tokens,
which are compared with a plain reference loop.
"""

from __future__ import annotations

import random

import pytest
from rt.core.errors import ConfigError, RequestError
from rt.core.step import SamplingParams, StepMetadata
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.scheduler import Scheduler
from rt.plugins.tp.engine.sequence import Sequence, SequenceStatus, TokenLogprobs

VOCAB = 97


def next_token(history: list[int]) -> int:
    return (sum(history) * 31 + len(history)) % VOCAB


def reference(prompt: list[int], max_tokens: int) -> list[int]:
    history, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(history))
        history.append(out[-1])
    return out


class PagedFakeModel:
    def __init__(self, bm: BlockManager) -> None:
        self.block_size = bm.block_size
        # Each slot holds (owner seq_id, token), so reading another sequence's KV fails.
        self.slots: list[list[tuple[int, int] | None]] = [
            [None] * bm.block_size for _ in range(bm.num_blocks)
        ]

    def _slot(self, table: tuple[int, ...], pos: int) -> tuple[int, int]:
        return table[pos // self.block_size], pos % self.block_size

    def __call__(self, step: StepMetadata) -> list[int]:
        written: set[tuple[int, int]] = set()
        out = []
        for s in step.seqs:
            end = s.start_pos + len(s.token_ids)
            assert len(s.block_table) * self.block_size >= end
            for i, token in enumerate(s.token_ids):
                block, off = self._slot(s.block_table, s.start_pos + i)
                assert (block, off) not in written, "two sequences share a KV slot"
                written.add((block, off))
                self.slots[block][off] = (s.seq_id, token)
            if s.sample:
                history = []
                for pos in range(end):
                    block, off = self._slot(s.block_table, pos)
                    entry = self.slots[block][off]
                    assert entry is not None and entry[0] == s.seq_id, (s.seq_id, pos, entry)
                    history.append(entry[1])
                out.append(next_token(history))
        return out


def make(
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 128,
    eos: tuple[int, ...] = (),
) -> tuple[Scheduler, PagedFakeModel]:
    bm = BlockManager(num_blocks, block_size)
    sched = Scheduler(bm, max_num_seqs, max_num_batched_tokens, max_model_len, eos)
    return sched, PagedFakeModel(bm)


def run_step(sched: Scheduler, model: PagedFakeModel):
    step = sched.schedule()
    assert step is not None
    assert len(step.seqs) <= sched.max_num_seqs
    assert step.num_tokens <= sched.max_num_batched_tokens
    return step, sched.postprocess(step, model(step))


def drain(sched: Scheduler, model: PagedFakeModel, max_steps: int = 10_000) -> int:
    steps = 0
    while sched.has_unfinished:
        run_step(sched, model)
        steps += 1
        assert steps < max_steps, "scheduler did not finish"
    assert sched.schedule() is None
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks
    return steps


def seq(seq_id: int, prompt: list[int], max_tokens: int, **kw) -> Sequence:
    return Sequence(seq_id, prompt, SamplingParams(max_tokens=max_tokens, **kw))


def test_single_request_prefills_then_decodes() -> None:
    sched, model = make()
    s = seq(0, [5, 6, 7], 4)
    sched.add(s)
    step, outcome = run_step(sched, model)
    (only,) = step.seqs
    assert only.token_ids == (5, 6, 7) and only.start_pos == 0 and only.sample
    assert outcome.advanced == [s] and s.num_cached_tokens == 3
    step, _ = run_step(sched, model)
    assert step.seqs[0].token_ids == (s.output_token_ids[0],) and step.seqs[0].start_pos == 3
    assert step.seqs[0].num_generated == 1
    drain(sched, model)
    assert s.output_token_ids == reference([5, 6, 7], 4)
    assert s.finish_reason == "length" and s.status is SequenceStatus.FINISHED


def test_requests_join_and_leave_the_running_batch() -> None:
    sched, model = make()
    a, b = seq(0, [1, 2, 3], 4), seq(1, [9, 8, 7, 6, 5], 8)
    sched.add(a)
    run_step(sched, model)
    run_step(sched, model)
    sched.add(b)
    step, _ = run_step(sched, model)
    # b joins in the step it is admitted, next to a's decode
    assert [(x.seq_id, len(x.token_ids)) for x in step.seqs] == [(0, 1), (1, 5)]
    assert sched.num_running == 2
    _, outcome = run_step(sched, model)
    assert outcome.finished == [a] and sched.num_running == 1  # a leaves after 4 tokens
    step, _ = run_step(sched, model)
    assert [x.seq_id for x in step.seqs] == [1]
    drain(sched, model)
    assert a.output_token_ids == reference([1, 2, 3], 4)
    assert b.output_token_ids == reference([9, 8, 7, 6, 5], 8)


@pytest.mark.parametrize("rng_seed", [0, 1, 2])
def test_small_kv_cache_completes_every_request_with_the_same_tokens(rng_seed: int) -> None:
    rng = random.Random(rng_seed)
    # 16 blocks of 4 tokens: far fewer than 12 requests need at once.
    sched, model = make(num_blocks=16, block_size=4, max_num_seqs=6, max_num_batched_tokens=24)
    seqs = []
    for i in range(12):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 20))]
        seqs.append(seq(i, prompt, rng.randint(1, 30)))
        sched.add(seqs[-1])
    drain(sched, model)
    assert sched.num_preemptions > 0
    for s in seqs:
        assert s.output_token_ids == reference(s.prompt_token_ids, s.sampling.max_tokens)
        assert s.finish_reason == "length"


def test_preempted_sequence_is_recomputed_from_prompt_and_generated_tokens() -> None:
    sched, model = make(num_blocks=4, block_size=2, max_num_seqs=4, max_num_batched_tokens=16)
    a, b = seq(0, [1, 2, 3], 4), seq(1, [4, 5, 6], 4)
    sched.add(a)
    sched.add(b)
    run_step(sched, model)  # both prefilled: 4 tokens each after sampling, 2 blocks each
    run_step(sched, model)  # 5 tokens each
    assert sched.block_manager.num_free_blocks == 0

    step, _ = run_step(sched, model)  # a needs a third block: b (newest) is preempted
    assert [x.seq_id for x in step.seqs] == [0]
    assert sched.num_preemptions == 1 and b.num_preemptions == 1
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_cached_tokens == 0
    assert list(sched.waiting) == [b] and len(b.output_token_ids) == 2

    _, outcome = run_step(sched, model)
    assert outcome.finished == [a]
    step, _ = run_step(sched, model)
    (recompute,) = step.seqs
    assert recompute.seq_id == 1 and recompute.start_pos == 0 and recompute.sample
    assert list(recompute.token_ids) == b.prompt_token_ids + b.output_token_ids[:2]
    assert recompute.num_generated == 2
    drain(sched, model)
    assert a.output_token_ids == reference([1, 2, 3], 4)
    assert b.output_token_ids == reference([4, 5, 6], 4)
    assert b.num_prompt_tokens == 3  # the prompt the user sent is unchanged


def test_chunked_prefill_splits_a_long_prompt_and_keeps_decodes_going() -> None:
    sched, model = make(max_num_seqs=4, max_num_batched_tokens=8)
    short = seq(0, [3, 1], 10)
    sched.add(short)
    run_step(sched, model)
    long_prompt = list(range(1, 21))
    long = seq(1, long_prompt, 3)
    sched.add(long)
    chunks = []
    for _ in range(3):
        step, _ = run_step(sched, model)
        assert step.seqs[0].seq_id == 0 and len(step.seqs[0].token_ids) == 1  # decode first
        chunks.append((step.seqs[1].start_pos, len(step.seqs[1].token_ids), step.seqs[1].sample))
    assert chunks == [(0, 7, False), (7, 7, False), (14, 6, True)]
    assert long.num_generated == 1
    drain(sched, model)
    assert long.output_token_ids == reference(long_prompt, 3)
    assert short.output_token_ids == reference([3, 1], 10)


def test_a_request_that_can_never_fit_is_rejected_with_the_numbers() -> None:
    sched, _ = make(num_blocks=8, block_size=4, max_model_len=64)
    with pytest.raises(RequestError, match=r"64 tokens.*max_model_len is 64.*at most 63"):
        sched.add(seq(0, list(range(64)), 1))
    with pytest.raises(
        RequestError, match=r"20 prompt tokens \+ up to 40 .*need 15 KV-cache blocks.*holds 8"
    ):
        sched.add(seq(1, list(range(20)), 40))
    with pytest.raises(RequestError, match="empty"):
        sched.add(seq(2, [], 4))
    with pytest.raises(RequestError, match="max_tokens is 0"):
        sched.add(seq(3, [1], 0))
    assert sched.num_waiting == 0 and not sched.has_unfinished
    # Exactly the whole cache fits: 20 + 13 - 1 = 32 tokens of KV = 8 blocks.
    ok = seq(4, list(range(20)), 13)
    sched.add(ok)
    drain(sched, PagedFakeModel(sched.block_manager))
    assert ok.output_token_ids == reference(list(range(20)), 13)


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"max_num_batched_tokens \(4\).*max_num_seqs \(8\)"):
        Scheduler(BlockManager(8, 4), 8, 4, 64)
    with pytest.raises(ConfigError, match="max_model_len"):
        Scheduler(BlockManager(8, 4), 8, 64, 0)


def test_abort_frees_blocks_wherever_the_sequence_is() -> None:
    sched, model = make(num_blocks=6, block_size=4, max_num_seqs=1)
    a, b, c = seq(0, [1] * 10, 5), seq(1, [2] * 3, 5), seq(2, [3] * 3, 5)
    for s in (a, b, c):
        sched.add(s)
    step = sched.schedule()
    assert sched.num_running == 1 and sched.block_manager.num_used_blocks == 3

    assert sched.abort(1) is b  # waiting
    assert b.finish_reason == "abort" and sched.num_waiting == 1
    assert sched.abort(0) is a  # running, with a step in flight
    assert sched.block_manager.num_free_blocks == 6 and a.block_table == []
    outcome = sched.postprocess(step, model(step))
    assert outcome.advanced == [] and a.output_token_ids == []
    assert sched.abort(0) is None

    drain(sched, model)
    assert c.output_token_ids == reference([3] * 3, 5)


def test_finish_and_stop_conditions() -> None:
    prompt = [4, 4, 2]
    ref = reference(prompt, 20)
    eos = ref[2]
    first = ref.index(eos)
    sched, model = make(eos=(eos,), max_model_len=len(prompt) + 6)
    by_eos = seq(0, prompt, 20)
    ignoring = seq(1, prompt, 20, ignore_eos=True)
    by_stop_id = seq(2, prompt, 20, stop_token_ids=(ref[1],))
    stopped_by_engine = seq(3, prompt, 20, ignore_eos=True)
    for s in (by_eos, ignoring, by_stop_id, stopped_by_engine):
        sched.add(s)
    run_step(sched, model)
    assert sched.finish(3, "stop") is stopped_by_engine
    assert stopped_by_engine.finish_reason == "stop" and stopped_by_engine.block_table == []
    drain(sched, model)
    assert by_eos.output_token_ids == ref[: first + 1] and by_eos.finish_reason == "stop"
    assert by_stop_id.output_token_ids == ref[: ref.index(ref[1]) + 1]
    assert by_stop_id.finish_reason == "stop"
    # ignore_eos runs to max_model_len: 3 prompt + 6 output tokens
    assert ignoring.output_token_ids == ref[:6] and ignoring.finish_reason == "length"


def test_logprobs_are_recorded_per_token() -> None:
    sched, model = make()
    s = seq(0, [1, 2], 2)
    sched.add(s)
    while sched.has_unfinished:
        step = sched.schedule()
        tokens = model(step)
        lps = [TokenLogprobs(t, -0.5, ((t, -0.5),)) for t in tokens]
        sched.postprocess(step, tokens, lps)
    assert [lp.token_id for lp in s.output_logprobs] == s.output_token_ids


def test_no_starvation_of_a_long_prompt_among_a_stream_of_short_ones() -> None:
    sched, model = make(num_blocks=16, block_size=4, max_num_seqs=8, max_num_batched_tokens=32)
    rng = random.Random(0)
    arrived: dict[int, int] = {}
    done: dict[int, int] = {}
    admitted: dict[int, int] = {}
    seqs: dict[int, Sequence] = {}
    next_id = 0
    for step_no in range(2000):
        if step_no < 150:  # two short requests every step: more than the cache serves
            for _ in range(2):
                prompt = [rng.randrange(VOCAB) for _ in range(4)]
                seqs[next_id] = seq(next_id, prompt, 8)
                sched.add(seqs[next_id])
                arrived[next_id] = step_no
                next_id += 1
        if step_no == 5:  # 50-token prompt: 14 of the 16 blocks
            seqs[-1] = seq(-1, list(range(50)), 4)
            sched.add(seqs[-1])
            arrived[-1] = step_no
        if not sched.has_unfinished:
            break
        step, outcome = run_step(sched, model)
        for x in step.seqs:
            admitted.setdefault(x.seq_id, step_no)
        for s in outcome.finished:
            done[s.seq_id] = step_no
    assert set(done) == set(seqs)
    by_arrival = sorted(seqs, key=lambda sid: seqs[sid].arrival)
    admission_steps = [admitted[sid] for sid in by_arrival]
    assert admission_steps == sorted(admission_steps), "a later request overtook an earlier one"
    assert sched.num_preemptions > 0
    latency = {sid: done[sid] - arrived[sid] for sid in seqs}
    # Admission is in arrival order, so the long request waits only for the 10
    # short ones ahead of it (8 tokens each, at most 8 at a time), never for later ones.
    assert latency[-1] <= 40
    for sid, s in seqs.items():
        assert s.output_token_ids == reference(s.prompt_token_ids, s.sampling.max_tokens), sid
