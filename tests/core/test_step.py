"""The columnar step schema: built from per-sequence records and read back exactly."""

from __future__ import annotations

import pickle

import attrs
import pytest
from rt.core.step import SamplingParams, SeqStep, StepBuilder, StepMetadata

GREEDY = SamplingParams(temperature=0.0)
HOT = SamplingParams(temperature=0.8, seed=3)
SEQS = (
    SeqStep(4, (1, 2, 3), 0, (7,), sample=False, sampling=GREEDY),
    SeqStep(9, (5,), 16, (2, 8), num_generated=3, sampling=HOT),
    SeqStep(2, (6,), 3, (1,), sampling=GREEDY),
)


def test_from_seqs_lays_the_sequences_out_column_by_column():
    step = StepMetadata.from_seqs(11, SEQS).check()
    assert list(step.seq_ids) == [4, 9, 2]
    assert list(step.token_counts) == [3, 1, 1]
    assert list(step.start_positions) == [0, 16, 3]
    assert list(step.token_ids) == [1, 2, 3, 5, 6]
    assert list(step.table_lens) == [1, 2, 1] and list(step.block_ids) == [7, 2, 8, 1]
    assert list(step.sample) == [0, 1, 1]
    # One record per distinct params object, shared by the sequences that use it.
    assert step.sampling == (GREEDY, HOT) and list(step.sampling_index) == [0, 1, 0]
    assert step.num_seqs == 3 and step.num_tokens == 5


def test_the_per_sequence_view_gives_back_the_records():
    step = StepMetadata.from_seqs(11, SEQS)
    assert step.seqs == SEQS
    assert pickle.loads(pickle.dumps(step)) == step


def test_sampled_params_follow_the_sampling_sequences_in_order():
    params, generated = StepMetadata.from_seqs(0, SEQS).sampled_params()
    assert params == [HOT, GREEDY] and generated == [3, 0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: attrs.evolve(s, token_ids=s.token_ids[:-1]), "token counts add up to 5"),
        (lambda s: attrs.evolve(s, block_ids=s.block_ids[:-1]), "table lengths add up to 4"),
        (lambda s: attrs.evolve(s, sample=s.sample[:2]), "sample has 2 entries"),
        (lambda s: attrs.evolve(s, sampling=s.sampling[:1]), "outside its 1 sampling"),
        (lambda s: attrs.evolve(s, seq_ids=s.seq_ids[:2] * 1 + s.seq_ids[:1]), "twice"),
    ],
)
def test_check_names_what_disagrees(change, match):
    with pytest.raises(ValueError, match=match):
        change(StepMetadata.from_seqs(0, SEQS)).check()


def test_a_value_outside_the_layout_is_a_clear_error():
    with pytest.raises(ValueError, match="seq 1: .*int32"):
        StepBuilder().add(1, (2**31,), 0, (), True, 0, GREEDY)
