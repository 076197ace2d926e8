"""The step metadata schema: what the driver tells every TP rank to run in one engine step.

A step is *columnar*: one ``array.array`` per field, with entry ``i`` of each
per-sequence array describing the step's ``i``-th sequence, and the variable-length
parts (new token ids, block tables) flattened into one array each. A channel moves
a step as a handful of memory copies and a rank turns it into tensors with
``torch.frombuffer``, with no per-sequence Python work on either side; a batch of
64 sequences costs about what a batch of one does. (Version 1 held a tuple of
per-sequence records: encoding and decoding them cost ~1 us per sequence each.)

:class:`SeqStep` is the per-sequence view for building a step by hand
(:meth:`StepMetadata.from_seqs`) and for reading one back (:attr:`StepMetadata.seqs`);
the engine's hot path uses :class:`StepBuilder` and the arrays directly. Nothing here
imports torch. ``STEP_SCHEMA_VERSION`` changes whenever a field does; ranks compare it
during the channel's startup round trip.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

import attrs
from rt.core.sampling import SamplingParams

__all__ = ["STEP_SCHEMA_VERSION", "SamplingParams", "SeqStep", "StepBuilder", "StepMetadata"]

STEP_SCHEMA_VERSION = 4  # 3: SamplingParams' penalties and logit_bias; 4: prompt_logprobs

# Typecodes of the arrays: seq ids are int64, everything else int32 ("sample" is int8).
SEQ_ID_TYPE, INT_TYPE, FLAG_TYPE = "q", "i", "b"
_ARRAY_FIELDS = {
    "seq_ids": SEQ_ID_TYPE, "token_counts": INT_TYPE, "start_positions": INT_TYPE,
    "num_generated": INT_TYPE, "sample": FLAG_TYPE, "sampling_index": INT_TYPE,
    "table_lens": INT_TYPE, "token_ids": INT_TYPE, "block_ids": INT_TYPE,
}  # fmt: skip


@attrs.frozen
class SeqStep:
    """One sequence's share of a step (a row of :class:`StepMetadata`).

    ``token_ids`` are the tokens to run through the model now; the first of them
    sits at position ``start_pos``, which is also how many of the sequence's tokens
    are already in the KV cache. ``block_table`` lists the KV-cache blocks of the
    whole sequence, in order, covering at least ``start_pos + len(token_ids)``
    tokens. ``sample`` says whether the last position's logits are wanted (false for
    a prefill chunk that does not finish the prompt).
    """

    seq_id: int
    token_ids: tuple[int, ...]
    start_pos: int
    block_table: tuple[int, ...]
    sample: bool = True
    num_generated: int = 0
    sampling: SamplingParams = SamplingParams()


@attrs.frozen
class StepMetadata:
    """Everything every rank needs to run one forward pass of the batch.

    Per sequence ``i`` (arrays of length ``num_seqs``): ``seq_ids[i]``,
    ``token_counts[i]`` new tokens starting at position ``start_positions[i]``,
    ``num_generated[i]`` output tokens so far, ``sample[i]`` (1: its last position's
    logits are wanted), ``sampling[sampling_index[i]]`` its sampling params, and a
    block table of ``table_lens[i]`` entries. ``token_ids`` and ``block_ids`` hold
    the sequences' new tokens and block tables back to back, in sequence order.
    Sequences may share one :class:`SamplingParams` record.

    A step a rank receives may hold ``memoryview`` s of the same typecodes instead of
    arrays, viewing the channel's buffer and valid until the rank's next ``recv``;
    :meth:`owned` copies them.

    Example::

        step = StepMetadata.from_seqs(7, [SeqStep(seq_id=1, token_ids=(5, 6), start_pos=0,
                                                  block_table=(3,))])
        step.token_ids       # array('i', [5, 6])
        step.seqs[0].block_table  # (3,)
    """

    step_id: int
    seq_ids: array
    token_counts: array
    start_positions: array
    num_generated: array
    sample: array
    sampling_index: array
    table_lens: array
    token_ids: array
    block_ids: array
    sampling: tuple[SamplingParams, ...] = ()
    version: int = STEP_SCHEMA_VERSION

    @classmethod
    def from_seqs(cls, step_id: int, seqs: Iterable[SeqStep]) -> StepMetadata:
        builder = StepBuilder()
        for s in seqs:
            builder.add(
                s.seq_id, s.token_ids, s.start_pos, s.block_table, s.sample,
                s.num_generated, s.sampling,
            )  # fmt: skip
        return builder.build(step_id)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def seqs(self) -> tuple[SeqStep, ...]:
        """The step as per-sequence records (a copy: for tests, logs and tools)."""
        out, t, b = [], 0, 0
        for i in range(self.num_seqs):
            n, m = self.token_counts[i], self.table_lens[i]
            out.append(
                SeqStep(
                    seq_id=self.seq_ids[i],
                    token_ids=tuple(self.token_ids[t : t + n]),
                    start_pos=self.start_positions[i],
                    block_table=tuple(self.block_ids[b : b + m]),
                    sample=bool(self.sample[i]),
                    num_generated=self.num_generated[i],
                    sampling=self.sampling[self.sampling_index[i]],
                )
            )
            t, b = t + n, b + m
        return tuple(out)

    def owned(self) -> StepMetadata:
        """This step with arrays of its own: keep (or pickle) this, not a received step
        whose arrays are views of a channel buffer that the next message reuses."""
        copies = {}
        for name, code in _ARRAY_FIELDS.items():
            values = array(code)
            values.frombytes(memoryview(getattr(self, name)).cast("B"))
            copies[name] = values
        return attrs.evolve(self, **copies)

    def sampled_params(self) -> tuple[list[SamplingParams], list[int]]:
        """Sampling params and ``num_generated`` of the sequences with ``sample`` set,
        in step order: what the sampler needs for the rows ``run`` returns."""
        params, generated, sampling, index = [], [], self.sampling, self.sampling_index
        for i, flag in enumerate(self.sample):
            if flag:
                params.append(sampling[index[i]])
                generated.append(self.num_generated[i])
        return params, generated

    def prompt_rows(self) -> list[tuple[int, int, int]]:
        """``(i, first, count)`` per sequence ``i`` whose prompt logprobs this step
        computes: the hidden-state rows ``first .. first + count - 1`` of the step's
        tokens, each predicting the token after it. Only a request's first prefill
        asks (``num_generated`` 0: a recompute after preemption has them already), and
        the row that samples is left out: its logits are the sampler's. Every rank
        derives the same rows from the step, so their logits' collectives match."""
        rows, first, sampling, index = [], 0, self.sampling, self.sampling_index
        if all(p.prompt_logprobs is None for p in sampling):  # the usual step: no loop
            return rows
        for i, count in enumerate(self.token_counts):
            wanted = sampling[index[i]].prompt_logprobs is not None
            if wanted and self.num_generated[i] == 0:
                n = count - (1 if self.sample[i] else 0)
                if n > 0:
                    rows.append((i, first, n))
            first += count
        return rows

    def check(self) -> StepMetadata:
        """Raise ``ValueError`` unless the arrays agree with each other; return self."""
        n = len(self.seq_ids)
        per_seq = ("token_counts", "start_positions", "num_generated", "sample",
                   "sampling_index", "table_lens")  # fmt: skip
        for name in per_seq:
            if len(getattr(self, name)) != n:
                raise ValueError(f"step {self.step_id}: {n} seq ids but {name} has "
                                 f"{len(getattr(self, name))} entries")  # fmt: skip
        if min(self.token_counts, default=0) < 0 or min(self.table_lens, default=0) < 0:
            raise ValueError(f"step {self.step_id}: negative token count or table length")
        if sum(self.token_counts) != len(self.token_ids):
            raise ValueError(
                f"step {self.step_id}: token counts add up to {sum(self.token_counts)}, "
                f"token_ids holds {len(self.token_ids)}"
            )
        if sum(self.table_lens) != len(self.block_ids):
            raise ValueError(
                f"step {self.step_id}: table lengths add up to {sum(self.table_lens)}, "
                f"block_ids holds {len(self.block_ids)}"
            )
        if any(not 0 <= k < len(self.sampling) for k in self.sampling_index):
            raise ValueError(
                f"step {self.step_id}: a sampling index is outside its "
                f"{len(self.sampling)} sampling records"
            )
        if len(set(self.seq_ids)) != n:
            raise ValueError(f"step {self.step_id} lists a seq id twice")
        return self


class StepBuilder:
    """Appends sequences to the arrays of one step; ``build`` freezes them.

    Sampling params are deduplicated by identity (a request's sequences share its
    record), so a decode step of 64 requests carries each record once.
    """

    def __init__(self) -> None:
        self.seq_ids = array(SEQ_ID_TYPE)
        self.token_counts = array(INT_TYPE)
        self.start_positions = array(INT_TYPE)
        self.num_generated = array(INT_TYPE)
        self.sample = array(FLAG_TYPE)
        self.sampling_index = array(INT_TYPE)
        self.table_lens = array(INT_TYPE)
        self.token_ids = array(INT_TYPE)
        self.block_ids = array(INT_TYPE)
        self.sampling: list[SamplingParams] = []
        self._record: dict[int, int] = {}  # id(params) -> index in self.sampling

    def add(
        self,
        seq_id: int,
        token_ids: Sequence[int],
        start_pos: int,
        block_table: Sequence[int],
        sample: bool,
        num_generated: int,
        sampling: SamplingParams,
    ) -> None:
        k = self._record.get(id(sampling))
        if k is None:
            k = self._record[id(sampling)] = len(self.sampling)
            self.sampling.append(sampling)
        try:
            self.seq_ids.append(seq_id)
            self.token_counts.append(len(token_ids))
            self.start_positions.append(start_pos)
            self.num_generated.append(num_generated)
            self.sample.append(1 if sample else 0)
            self.sampling_index.append(k)
            self.table_lens.append(len(block_table))
            self.token_ids.extend(token_ids)
            self.block_ids.extend(block_table)
        except OverflowError:
            # The builder is unusable now (its arrays differ in length); so is the step.
            raise ValueError(
                f"seq {seq_id}: a value does not fit the step layout: seq ids must fit "
                "int64, token ids, positions, counts and block ids int32"
            ) from None

    def __len__(self) -> int:
        return len(self.seq_ids)

    def build(self, step_id: int) -> StepMetadata:
        return StepMetadata(
            step_id, self.seq_ids, self.token_counts, self.start_positions,
            self.num_generated, self.sample, self.sampling_index, self.table_lens,
            self.token_ids, self.block_ids, tuple(self.sampling),
        )  # fmt: skip
