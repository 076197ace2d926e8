"""Turn the last position's logits of each sequence into its next token.

A row's ``logit_bias`` and penalties are applied first (penalties.py). Greedy rows
take the argmax. Other rows divide by their temperature, drop the tokens less than
``min_p`` times as likely as the top one, keep the top-k tokens, then the smallest
nucleus whose probability reaches top-p (always at least one token), and draw by
inverse CDF: one uniform number per row, located in the cumulative sum of what is
left, in vocabulary order. Every cut is a value threshold (tokens tied at the
threshold are all kept), so no sort order leaks in.

Seeded rows take their uniform from a generator seeded with ``(seed, n)`` for the
n-th output token, so a seeded request gives the same tokens whatever else is in
the batch and after a preemption (the row's arithmetic depends on its own logits
and parameters only). Unseeded rows share the sampler's generator. Uniforms are
drawn on the CPU: a handful of numbers, one host-to-device copy.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC

import attrs
import torch
from rt.core.step import SamplingParams
from rt.plugins.tp.engine.penalties import adjust_logits
from rt.plugins.tp.engine.sequence import SamplerExtras, TokenLogprobs

_SEED_MUL = 1_000_003
_SEED_MOD = 2**63
# Tokens tried for the top-p nucleus before sorting the whole vocabulary.
_NUCLEUS_GUESS = 256


@attrs.frozen
class SampleResult:
    """One token per row, and its logprobs where the request asked for them."""

    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]


def request_seed(seed: int, n: int) -> int:
    """The generator seed for the ``n``-th output token of a request seeded ``seed``."""
    return (seed * _SEED_MUL + n) % _SEED_MOD


def _wants_logprobs(p: SamplingParams) -> bool:
    return p.want_logprobs or p.logprobs > 0


class Sampler:
    """Samples a batch of rows, each with its own ``SamplingParams``.

    Example::

        sampler = Sampler(seed=0)
        out = sampler.sample(logits, [SamplingParams(temperature=0)], num_generated=[0])
        out.token_ids   # [int(logits[0].argmax())]
    """

    def __init__(self, seed: int | None = None) -> None:
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    @torch.inference_mode()
    def sample(
        self,
        logits: torch.Tensor,
        params: SequenceABC[SamplingParams],
        num_generated: SequenceABC[int],
        extras: SequenceABC[SamplerExtras | None] | None = None,
    ) -> SampleResult:
        """``extras[i]``: row ``i``'s generated tokens and ``logit_bias`` where its
        request has penalties or a bias (None elsewhere; None: no row has)."""
        # logits: [n, V] float32, one row per sequence that samples this step
        n = logits.shape[0]
        assert logits.dim() == 2 and len(params) == n == len(num_generated)
        raw = logits = logits.float()
        if extras is not None:
            logits = adjust_logits(logits, params, extras)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if not random_rows:
            tokens = logits.argmax(dim=-1)  # tokens: [n]
        elif len(random_rows) == n:
            tokens = self._sample_random(logits, params, num_generated)
        else:
            tokens = logits.argmax(dim=-1)
            rows = torch.tensor(random_rows, device=logits.device)
            tokens[rows] = self._sample_random(
                logits[rows],
                [params[i] for i in random_rows],
                [num_generated[i] for i in random_rows],
            )
        token_ids: list[int] = tokens.tolist()
        return SampleResult(token_ids, self._logprobs(raw, tokens, params, token_ids))

    def _sample_random(
        self,
        logits: torch.Tensor,
        params: SequenceABC[SamplingParams],
        num_generated: SequenceABC[int],
    ) -> torch.Tensor:
        # logits: [m, V]; every row has temperature > 0
        vocab = logits.shape[1]
        device = logits.device
        temps = torch.tensor([p.temperature for p in params], device=device)
        x = logits / temps.unsqueeze(1)  # x: [m, V]
        if any(p.min_p > 0.0 for p in params):
            x = _min_p(x, [p.min_p for p in params])
        top_ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
        if any(top_ks):
            x = _top_k(x, top_ks)
        probs = x.softmax(dim=-1)  # probs: [m, V]
        top_p_rows = [j for j, p in enumerate(params) if p.top_p < 1.0]
        if top_p_rows:
            probs = _top_p(probs, top_p_rows, [params[j].top_p for j in top_p_rows])
        cdf = probs.cumsum(dim=-1)  # cdf: [m, V], not renormalised after the cuts
        total = cdf[:, -1:]  # [m, 1]
        u = self._uniforms(params, num_generated).to(device, torch.float32)  # u: [m]
        # u rounded to float32 may be 1.0; stay strictly below the total so the
        # first cdf entry above the target always belongs to a kept token.
        below = torch.nextafter(total, torch.zeros_like(total))
        target = torch.minimum(u.unsqueeze(1) * total, below)  # [m, 1]
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(1)  # [m]
        # A row whose logits overflowed to infinity has a NaN distribution, and
        # searchsorted would answer V, past the vocabulary, failing the whole step:
        # such a row takes its most likely token instead.
        broken = ~torch.isfinite(total.squeeze(1))
        if bool(broken.any()):
            tokens = torch.where(broken, x.argmax(dim=-1), tokens)
        return tokens

    def _uniforms(
        self, params: SequenceABC[SamplingParams], num_generated: SequenceABC[int]
    ) -> torch.Tensor:
        """One U[0, 1) number per row, drawn on the CPU so that a seeded draw does
        not depend on the device either."""
        u = torch.rand(len(params), generator=self._generator, dtype=torch.float64)
        for j, (p, n) in enumerate(zip(params, num_generated, strict=True)):
            if p.seed is not None:
                g = torch.Generator().manual_seed(request_seed(p.seed, n))
                u[j] = torch.rand((), generator=g, dtype=torch.float64)
        return u

    def _logprobs(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        params: SequenceABC[SamplingParams],
        token_ids: list[int],
    ) -> list[TokenLogprobs | None]:
        rows = [i for i, p in enumerate(params) if _wants_logprobs(p)]
        out: list[TokenLogprobs | None] = [None] * len(params)
        if not rows:
            return out
        index = torch.tensor(rows, device=logits.device)
        lp = torch.log_softmax(logits[index], dim=-1)  # lp: [r, V], raw logits as OpenAI
        chosen = lp.gather(1, tokens[index].unsqueeze(1)).squeeze(1).tolist()
        top_n = min(max(params[i].logprobs for i in rows), lp.shape[1])
        top_vals: list[list[float]] = [[] for _ in rows]
        top_ids: list[list[int]] = [[] for _ in rows]
        if top_n:
            vals, ids = lp.topk(top_n, dim=-1)  # [r, top_n], sorted high to low
            top_vals, top_ids = vals.tolist(), ids.tolist()
        for j, i in enumerate(rows):
            k = params[i].logprobs
            top = tuple(zip(top_ids[j][:k], top_vals[j][:k], strict=True))
            out[i] = TokenLogprobs(token_id=token_ids[i], logprob=chosen[j], top=top)
        return out


def _min_p(x: torch.Tensor, min_ps: list[float]) -> torch.Tensor:
    """Mask each row's tokens less than ``min_p`` times as likely as its most likely
    one (0: no cut): p_j / p_max = exp(x_j - x_max), so the cut is a logit threshold."""
    # x: [m, V] logits after temperature
    ratio = torch.tensor(min_ps, dtype=x.dtype, device=x.device).unsqueeze(1)  # [m, 1]
    threshold = x.max(dim=-1, keepdim=True).values + ratio.log()  # log(0) = -inf: no cut
    return x.masked_fill(x < threshold, float("-inf"))


def _top_k(x: torch.Tensor, top_ks: list[int]) -> torch.Tensor:
    """Mask all but each row's ``k`` largest values (0: no cut); ties with the k-th
    value are kept, so the result does not depend on how a sort orders ties."""
    # x: [m, V]
    kth = x.topk(max(top_ks), dim=-1).values  # [m, k_max], sorted high to low
    ks = torch.tensor(top_ks, device=x.device).unsqueeze(1)  # [m, 1]
    threshold = kth.gather(1, (ks - 1).clamp_min(0))  # [m, 1]
    threshold = threshold.masked_fill(ks == 0, float("-inf"))
    return x.masked_fill(x < threshold, float("-inf"))


def _top_p(probs: torch.Tensor, rows: list[int], top_ps: list[float]) -> torch.Tensor:
    """Zero all but the smallest set of each row's most likely tokens whose mass
    reaches its ``top_p``; the set is found by a probability threshold, which
    ties cannot reorder."""
    # probs: [m, V]
    whole = len(rows) == probs.shape[0]
    index = torch.tensor(rows, device=probs.device)
    sub = probs if whole else probs[index]  # sub: [r, V]
    tp = torch.tensor(top_ps, device=probs.device).unsqueeze(1)  # [r, 1]
    # The nucleus nearly always lies in the top few hundred tokens: try those
    # before sorting the whole vocabulary. Prefix sums are the same either way.
    head = sub.topk(min(_NUCLEUS_GUESS, sub.shape[1]), dim=-1).values  # [r, K] sorted
    cum = head.cumsum(dim=-1)
    if bool((cum[:, -1:] < tp).any()):
        head = sub.sort(dim=-1, descending=True).values  # [r, V]
        cum = head.cumsum(dim=-1)
    cut = torch.searchsorted(cum, tp).clamp_max_(head.shape[1] - 1)  # [r, 1]
    sub = sub.masked_fill(sub < head.gather(1, cut), 0.0)
    if whole:
        return sub
    return probs.index_copy(0, index, sub)
