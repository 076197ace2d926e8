"""Presence and frequency penalties and logit_bias in the sampler, and how the
scheduler hands rank 0 what they need (never the other ranks)."""

from __future__ import annotations

import pytest
import torch
from rt.core.step import SamplingParams
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.penalties import adjust_logits
from rt.plugins.tp.engine.sampler import Sampler
from rt.plugins.tp.engine.scheduler import Scheduler
from rt.plugins.tp.engine.sequence import SamplerExtras, Sequence

torch.set_num_threads(1)
VOCAB = 64


def _logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, VOCAB, generator=torch.Generator().manual_seed(seed))


def test_penalties_follow_openais_formula_per_row() -> None:
    logits = _logits(3)
    params = [
        SamplingParams(presence_penalty=0.5, frequency_penalty=1.25),
        SamplingParams(),
        SamplingParams(frequency_penalty=-2.0, logit_bias=((7, 100.0), (3, -4.5))),
    ]
    extras = [
        SamplerExtras(outputs=(5, 9, 5, 5)),
        None,
        SamplerExtras((1, 1), ((7, 100.0), (3, -4.5))),
    ]
    out = adjust_logits(logits, params, extras)
    expected = logits.clone()
    expected[0, 5] -= 0.5 + 1.25 * 3
    expected[0, 9] -= 0.5 + 1.25
    expected[2, 1] += 2.0 * 2
    expected[2, 7] += 100.0
    expected[2, 3] -= 4.5
    torch.testing.assert_close(out, expected)
    assert out is not logits and torch.equal(out[1], logits[1])


def test_a_batch_without_extras_keeps_its_logits() -> None:
    logits = _logits(2)
    assert adjust_logits(logits, [SamplingParams()] * 2, [None, None]) is logits


def test_logit_bias_steers_greedy_and_sampled_rows_but_not_the_logprobs() -> None:
    logits = _logits(4, seed=1)
    top = int(logits[0].argmax())
    ban = SamplingParams(temperature=0.0, logit_bias=((top, -100.0),), logprobs=2)
    force = SamplingParams(temperature=0.8, logit_bias=((11, 100.0),), want_logprobs=True)
    params = [ban, force, force, SamplingParams(temperature=0.0)]
    extras = (
        [SamplerExtras(logit_bias=ban.logit_bias)]
        + [SamplerExtras(logit_bias=force.logit_bias)] * 2
        + [None]
    )
    out = Sampler(seed=0).sample(logits, params, [0] * 4, extras)
    assert out.token_ids[0] == int(logits[0].topk(2).indices[1])  # the runner-up
    assert out.token_ids[1:3] == [11, 11]
    assert out.token_ids[3] == int(logits[3].argmax())
    raw = torch.log_softmax(logits, dim=-1)
    assert out.logprobs[0].top[0] == (top, pytest.approx(float(raw[0, top]), abs=1e-5))
    assert out.logprobs[1].logprob == pytest.approx(float(raw[1, 11]), abs=1e-5)


def test_the_step_carries_neither_stop_strings_nor_logit_bias() -> None:
    # Their size is the client's choice: a step goes to every rank every step.
    full = SamplingParams(stop=("x" * 100_000,), logit_bias=((3, 1.0),), presence_penalty=1.0)
    sched = Scheduler(BlockManager(8, 16), 4, 64, 64)
    plain = Sequence(0, [1, 2], SamplingParams(max_tokens=4))
    biased = Sequence(1, [4, 5, 6], full)
    sched.add(plain)
    sched.add(biased)
    step = sched.schedule()
    assert [p.stop for p in step.sampling] == [(), ()]
    assert [p.logit_bias for p in step.sampling] == [(), ()]
    assert step.sampling[1].presence_penalty == 1.0
    assert sched.sampler_extras(step) == {1: SamplerExtras((), ((3, 1.0),))}
    sched.postprocess(step, [8, 9])
    step = sched.schedule()
    assert sched.sampler_extras(step) == {1: SamplerExtras((9,), ((3, 1.0),))}
    sched.abort(1)
    assert sched.sampler_extras(sched.schedule()) is None  # the usual step: no work


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5, -2.0]])
    params = [SamplingParams(repetition_penalty=2.0)]
    extras = [SamplerExtras(outputs=(2, 2), prompt=(0, 1))]
    out = adjust_logits(logits, params, extras)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 1.5, 0.5, -2.0]]))


def test_min_p_keeps_only_tokens_near_the_most_likely() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05: min_p 0.5 keeps 0.5 and 0.3 only
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    params = [SamplingParams(temperature=1.0, min_p=0.5, seed=s) for s in range(300)]
    out = Sampler().sample(logits.expand(300, -1), params, [0] * 300)
    assert set(out.token_ids) == {0, 1}
    only_top = Sampler().sample(logits, [SamplingParams(min_p=1.0)], [0])
    assert only_top.token_ids == [0]


def test_a_row_whose_logits_overflow_samples_its_top_token_not_past_the_vocabulary() -> None:
    # An infinite logit (a model's overflow, an extreme penalty) makes the softmax NaN;
    # the row must still get a token inside the vocabulary, and the others theirs.
    logits = _logits(3)
    logits[1, 5] = float("inf")
    params = [SamplingParams(temperature=1.0, seed=i) for i in range(3)]
    out = Sampler().sample(logits, params, [0] * 3)
    assert out.token_ids[1] == 5
    assert all(0 <= t < VOCAB for t in out.token_ids)


def test_min_tokens_bans_eos_and_stop_ids_until_reached() -> None:
    sched = Scheduler(BlockManager(8, 16), 4, 64, 64, eos_token_ids=[2])
    params = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=2, stop_token_ids=(5,))
    seq = Sequence(0, [1, 3], params)
    sched.add(seq)
    step = sched.schedule()
    assert sched.sampler_extras(step) == {0: SamplerExtras(banned=(2, 5))}
    logits = torch.zeros(1, 8)
    logits[0, 2] = 10.0  # EOS is the model's choice
    out = Sampler().sample(logits, [params], [0], [SamplerExtras(banned=(2, 5))])
    assert out.token_ids != [2]
    assert not sched.postprocess(step, [2]).finished, "EOS before min_tokens does not end it"
    step = sched.schedule()
    sched.postprocess(step, [4])
    step = sched.schedule()
    assert sched.sampler_extras(step) is None, "reached: nothing is banned any more"
    assert sched.postprocess(step, [5]).finished
