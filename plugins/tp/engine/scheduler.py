"""Continuous batching over a paged KV cache (no torch).

Every step is built afresh from two queues, ``running`` (admission order, oldest
first) and ``waiting`` (arrival order), under two budgets: at most
``max_num_seqs`` sequences and ``max_num_batched_tokens`` tokens per step.

Policy, in order, each step:

1. **Decode.** Every running sequence with one uncomputed token (its last sampled
   one) is scheduled for one token, oldest first. If the cache has no block for a
   sequence that crossed a block boundary, the *newest* running sequence is
   preempted: its blocks are freed, it goes back to the front of ``waiting`` and
   is recomputed later from scratch (all of its prompt and generated tokens are
   prefilled again, ``num_cached_tokens`` starts at 0). Its sampled tokens are
   kept, and seeded sampling is keyed on the output index, so the result is the
   same as without preemption.
2. **Chunked prefill continues.** A running sequence whose prompt did not fit in
   one step gets the next chunk from the tokens left in the budget.
3. **Admission.** Waiting sequences are admitted in arrival order while there is
   budget, a sequence slot and blocks for *all* of the sequence's tokens. A prompt
   longer than the tokens left is split (chunked prefill): its entry in the step has
   ``sample=False`` until the chunk that finishes it. Admission stops at the first
   sequence that does not fit (no overtaking), so a long prompt is not starved by
   short ones.

So prefill and decode are **mixed** in one step: a new request joins the running
batch in the very step it is admitted, and decodes never wait for a prefill.

No starvation: the oldest running sequence is never preempted by a newer one, and
``add`` rejects any request that could not run with the whole cache to itself, so
the oldest sequence always progresses and finishes within ``max_tokens`` steps;
waiting sequences are admitted strictly in order as blocks free up.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from collections.abc import Sequence as SequenceABC

import attrs
from rt.core.errors import ConfigError
from rt.core.step import StepBuilder, StepMetadata
from rt.plugins.tp.engine.admission import check_fits
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.sequence import (
    FinishReason,
    PromptLogprobs,
    SamplerExtras,
    Sequence,
    SequenceStatus,
    TokenLogprobs,
)


@attrs.frozen
class StepOutcome:
    """What one step did: sequences that got a token (in step order), and those
    of them that finished."""

    advanced: list[Sequence]
    finished: list[Sequence]


class Scheduler:
    """Decides what each engine step computes, and applies what it sampled.

    Example::

        sched = Scheduler(BlockManager(64, 16), max_num_seqs=8,
                          max_num_batched_tokens=512, max_model_len=256,
                          eos_token_ids=[2])
        sched.add(Sequence(0, [1, 5, 9], SamplingParams(max_tokens=4)))
        while (step := sched.schedule()) is not None:
            sampled = run_model(step)            # one token per sequence with sample set
            outcome = sched.postprocess(step, sampled)
    """

    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
    ) -> None:
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_model_len", max_model_len),
        ):
            if value < 1:
                raise ConfigError(f"scheduler: {name} must be >= 1, got {value}")
        if max_num_batched_tokens < max_num_seqs:
            # Every running sequence must be able to decode in every step.
            raise ConfigError(
                f"scheduler: max_num_batched_tokens ({max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({max_num_seqs}); raise the first or lower the second"
            )
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._live: dict[int, Sequence] = {}
        # live sequences with penalties, logit_bias or min_tokens
        self._with_extras: set[int] = set()
        self._arrivals = itertools.count()
        self._step_ids = itertools.count()

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self._live)

    def get(self, seq_id: int) -> Sequence | None:
        """The live (waiting or running) sequence with this id, if any."""
        return self._live.get(seq_id)

    def add(self, seq: Sequence) -> None:
        """Queue a new request; raise ``RequestError`` if it could never be served."""
        assert seq.seq_id not in self._live, f"sequence id {seq.seq_id} is already scheduled"
        assert seq.status is SequenceStatus.WAITING and not seq.block_table
        check_fits(seq, self.block_manager, self.max_model_len)
        seq.arrival = next(self._arrivals)
        self._live[seq.seq_id] = seq
        if seq.has_sampler_extras:
            self._with_extras.add(seq.seq_id)
        self.waiting.append(seq)

    def schedule(self) -> StepMetadata | None:
        """Build the next step, or return None when there is nothing to run."""
        budget = self.max_num_batched_tokens
        steps = StepBuilder()

        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if seq.num_uncomputed_tokens == 1:
                if not self._make_room(seq):
                    break  # seq preempted itself: everything after it is gone too
                self.block_manager.may_append(seq)
                self._add_seq(steps, seq, 1)
                budget -= 1
            i += 1

        for seq in self.running:
            if budget == 0:
                break
            if seq.num_uncomputed_tokens > 1:  # a prompt split over steps
                n = min(seq.num_uncomputed_tokens, budget)
                self._add_seq(steps, seq, n)
                budget -= n

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            self.block_manager.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            self._add_seq(steps, seq, n)
            budget -= n

        if not steps:
            # add() guarantees the head fits an empty cache, so only "no work" gets here.
            assert not self.running and not self.waiting, "scheduler made no progress"
            return None
        return steps.build(next(self._step_ids))

    def sampler_extras(self, step: StepMetadata) -> dict[int, SamplerExtras] | None:
        """What rank 0 needs beside ``step``, by sequence id: for a sequence that samples,
        its penalties, ``logit_bias`` and ``min_tokens``; for a prompt chunk whose
        logprobs are wanted, the prompt token after it. None when nothing is needed
        (the usual step)."""
        if not self._with_extras:
            return None
        extras = {}
        for seq_id, flag, start, count in zip(
            step.seq_ids, step.sample, step.start_positions, step.token_counts, strict=True
        ):
            if seq_id in self._with_extras:
                seq = self._live[seq_id]
                e = (
                    seq.sampler_extras(self.eos_token_ids)
                    if flag
                    else seq.chunk_extras(start + count)
                )
                if e is not None:
                    extras[seq_id] = e
        return extras or None

    def postprocess(
        self,
        step: StepMetadata,
        sampled: SequenceABC[int],
        logprobs: SequenceABC[TokenLogprobs | None] | None = None,
        prompt_logprobs: PromptLogprobs | None = None,
    ) -> StepOutcome:
        """Apply a step's results.

        ``sampled`` (and ``logprobs`` when given) hold one entry per sequence with
        ``sample`` set, in step order; ``prompt_logprobs``, what the step scored of
        prompts that asked. Sequences aborted or finished while the step ran are
        skipped.
        """
        num_sampling = sum(step.sample)
        assert len(sampled) == num_sampling, (len(sampled), num_sampling)
        assert logprobs is None or len(logprobs) == num_sampling
        advanced: list[Sequence] = []
        finished: list[Sequence] = []
        k = 0
        for seq_id, start, count, sample in zip(
            step.seq_ids, step.start_positions, step.token_counts, step.sample, strict=True
        ):
            token, lp = 0, None
            if sample:
                token = sampled[k]
                lp = logprobs[k] if logprobs is not None else None
                k += 1
            seq = self._live.get(seq_id)
            if seq is None or seq.status is not SequenceStatus.RUNNING:
                continue
            if seq.num_cached_tokens != start:
                continue  # preempted and readmitted since this step was built
            if prompt_logprobs and seq_id in prompt_logprobs:
                seq.set_prompt_logprobs(*prompt_logprobs[seq_id])
            seq.num_cached_tokens = start + count
            if not sample:
                continue
            seq.output_token_ids.append(int(token))
            seq.output_logprobs.append(lp)
            advanced.append(seq)
            reason = self._stop_reason(seq)
            if reason is not None:
                self._finish(seq, reason)
                finished.append(seq)
        return StepOutcome(advanced=advanced, finished=finished)

    def finish(self, seq_id: int, reason: FinishReason) -> Sequence | None:
        """Finish a live sequence now (a stop string matched, the client left) and
        free its blocks. Returns it, or None if it was not live."""
        seq = self._live.get(seq_id)
        if seq is None:
            return None
        self._finish(seq, reason)
        return seq

    def abort(self, seq_id: int) -> Sequence | None:
        """Drop a sequence wherever it is, freeing its blocks at once."""
        return self.finish(seq_id, "abort")

    def _make_room(self, seq: Sequence) -> bool:
        """Preempt the newest running sequences until ``seq`` can grow; False if
        ``seq`` itself had to go."""
        while not self.block_manager.can_append(seq):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        # Front of the queue: running sequences all arrived before waiting ones, and
        # victims go newest first, so arrival order is kept.
        self.waiting.appendleft(seq)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.block_manager.deallocate(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        del self._live[seq.seq_id]
        self._with_extras.discard(seq.seq_id)

    def _stop_reason(self, seq: Sequence) -> FinishReason | None:
        params, token = seq.sampling, seq.output_token_ids[-1]
        if seq.num_generated > params.min_tokens:  # (before it the sampler bans them)
            if not params.ignore_eos and token in self.eos_token_ids:
                return "stop"
            if token in params.stop_token_ids:
                return "stop"
        if seq.num_generated >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _add_seq(self, steps: StepBuilder, seq: Sequence, num_tokens: int) -> None:
        start = seq.num_cached_tokens
        steps.add(
            seq.seq_id,
            seq.uncomputed_token_ids(num_tokens),
            start,
            seq.block_table,
            start + num_tokens == seq.num_tokens,
            seq.num_generated,
            seq.step_sampling,
        )
