from __future__ import annotations

import math

import pytest
import torch
from rt.core.step import SamplingParams
from rt.plugins.tp.engine.sampler import Sampler

torch.set_num_threads(1)

GREEDY = SamplingParams(temperature=0.0)


def _logits(n: int, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * 3


def _frequencies(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def test_greedy_is_argmax() -> None:
    logits = _logits(32)
    out = Sampler(seed=0).sample(logits, [GREEDY] * 32, [0] * 32)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs == [None] * 32


def test_greedy_rows_stay_argmax_next_to_sampled_rows() -> None:
    logits = _logits(8)
    params = [GREEDY if i % 2 else SamplingParams(temperature=1.5) for i in range(8)]
    out = Sampler(seed=0).sample(logits, params, [0] * 8)
    for i in range(1, 8, 2):
        assert out.token_ids[i] == int(logits[i].argmax())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=5.0, top_p=1e-6),
        SamplingParams(temperature=2.0, top_k=50, top_p=1e-6, seed=3),
    ],
)
def test_top_k_one_and_tiny_top_p_are_greedy(params: SamplingParams) -> None:
    logits = _logits(32, seed=1)
    out = Sampler(seed=0).sample(logits, [params] * 32, list(range(32)))
    assert out.token_ids == logits.argmax(-1).tolist()


@pytest.mark.parametrize(
    ("scale", "seeded"),
    [
        (3.0, SamplingParams(temperature=1.0, seed=1234)),
        (3.0, SamplingParams(temperature=0.8, top_p=0.9, seed=1234)),
        (3.0, SamplingParams(temperature=1.2, top_k=20, top_p=0.8, seed=5)),
        (0.3, SamplingParams(temperature=1.0, top_p=0.95, seed=77)),  # nucleus > 256 tokens
    ],
)
def test_same_seed_gives_same_tokens_whatever_the_batch(
    scale: float, seeded: SamplingParams
) -> None:
    vocab = 1024
    row = _logits(1, vocab, seed=7)[0] / 3 * scale
    alone = [Sampler(seed=0).sample(row[None], [seeded], [n]).token_ids[0] for n in range(20)]

    neighbours = [
        GREEDY,
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.97),  # flat logits: sorts the whole vocab
        SamplingParams(temperature=1.0, seed=99),
        SamplingParams(temperature=1.0),
    ]
    sampler = Sampler(seed=123)  # a different shared generator must not matter
    for n in range(20):
        logits = _logits(6, vocab, seed=100 + n) / 10
        at = n % 6  # the seeded row moves around the batch
        logits[at] = row
        params = neighbours[:at] + [seeded] + neighbours[at:]
        out = sampler.sample(logits, params, [n] * 6)
        assert out.token_ids[at] == alone[n], n
    assert len(set(alone)) > 1  # it really samples: the test is not vacuous


def test_different_seeds_differ() -> None:
    logits = torch.zeros(1, 256)
    runs = [
        [Sampler().sample(logits, [SamplingParams(seed=seed)], [n]).token_ids[0] for n in range(20)]
        for seed in (1, 2)
    ]
    assert runs[0] != runs[1]


def test_unseeded_rows_follow_the_sampler_seed() -> None:
    logits = _logits(16)
    params = [SamplingParams(temperature=1.0)] * 16
    a = Sampler(seed=5).sample(logits, params, [0] * 16).token_ids
    b = Sampler(seed=5).sample(logits, params, [0] * 16).token_ids
    assert a == b


PROBS = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)


def _draw(params: SamplingParams, rows: int = 20_000) -> torch.Tensor:
    logits = PROBS.log().float().expand(rows, 4).contiguous()
    out = Sampler(seed=0).sample(logits, [params] * rows, [0] * rows)
    return _frequencies(out.token_ids, 4)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_reshapes_the_distribution(temperature: float) -> None:
    expected = PROBS ** (1 / temperature)
    expected /= expected.sum()
    got = _draw(SamplingParams(temperature=temperature))
    # 20k draws: one standard deviation is at most 0.0036; allow about 4.
    assert torch.allclose(got, expected, atol=0.015), (got, expected)


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        (SamplingParams(top_k=2), [0, 1]),
        (SamplingParams(top_p=0.7), [0, 1]),  # 0.5 < 0.7 <= 0.75
        (SamplingParams(top_p=0.8), [0, 1, 2]),
        (SamplingParams(top_k=3, top_p=0.6), [0, 1]),  # top-p on the renormalised top-3
    ],
)
def test_top_k_and_top_p_keep_the_right_tokens_in_proportion(
    params: SamplingParams, kept: list[int]
) -> None:
    expected = torch.zeros(4, dtype=torch.float64)
    expected[kept] = PROBS[kept] / PROBS[kept].sum()
    got = _draw(params)
    assert torch.allclose(got, expected, atol=0.015), (got, expected)


def test_logprobs_are_sorted_top_n_of_the_raw_log_softmax() -> None:
    logits = _logits(4, vocab=64, seed=3)
    params = [
        SamplingParams(temperature=0.5, logprobs=5),
        GREEDY,
        SamplingParams(temperature=0.0, want_logprobs=True),
        SamplingParams(temperature=1.0, top_k=3, logprobs=20),
    ]
    out = Sampler(seed=0).sample(logits, params, [0] * 4)
    lsm = torch.log_softmax(logits.double(), dim=-1)
    assert out.logprobs[1] is None
    for i, n in ((0, 5), (2, 0), (3, 20)):
        lp = out.logprobs[i]
        assert lp is not None and lp.token_id == out.token_ids[i]
        # raw logits: temperature and top-k do not change what is reported
        assert math.isclose(lp.logprob, lsm[i, lp.token_id].item(), abs_tol=1e-5)
        assert len(lp.top) == n
        ids = [t for t, _ in lp.top]
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert ids == lsm[i].topk(n).indices.tolist()
        for t, v in lp.top:
            assert math.isclose(v, lsm[i, t].item(), abs_tol=1e-5)


def test_logprobs_are_capped_at_20() -> None:
    with pytest.raises(ValueError, match="at most 20"):
        SamplingParams(logprobs=21)


def test_small_vocab_and_large_top_k() -> None:
    logits = _logits(3, vocab=4)
    params = [SamplingParams(top_k=100, logprobs=20, seed=1)] * 3
    out = Sampler(seed=0).sample(logits, params, [0, 1, 2])
    assert all(0 <= t < 4 for t in out.token_ids)
    assert all(len(lp.top) == 4 for lp in out.logprobs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_contract() -> None:
    logits = _logits(32).cuda()
    sampler = Sampler(seed=0)
    assert sampler.sample(logits, [GREEDY] * 32, [0] * 32).token_ids == logits.argmax(-1).tolist()
    seeded = [SamplingParams(temperature=1.0, top_p=0.9, seed=i) for i in range(32)]
    a = sampler.sample(logits, seeded, [3] * 32).token_ids
    b = sampler.sample(logits.flip(0), seeded[::-1], [3] * 32).token_ids
    assert a == b[::-1]


def test_a_tiny_temperature_is_greedy_not_nan():
    # Dividing by 1e-30 would overflow float32 to inf and give NaN probabilities.
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    params = [SamplingParams(temperature=1e-30, seed=1), SamplingParams(temperature=9e-6)]
    out = Sampler().sample(logits, params, num_generated=[0, 0])
    assert out.token_ids == [1, 0]
