"""The interleaved KV cache layout, the one-op K/V store and the in-place rotary."""

from __future__ import annotations

import pytest
import torch
from rt.plugins.tp.kv_cache import KVCacheSpec
from rt.plugins.tp.layers.kv_store import slot_view, store_kv
from rt.plugins.tp.layers.rotary import RotaryEmbedding, apply_rotary_


def test_layer_views_are_the_halves_of_one_slot_view():
    cache = KVCacheSpec(3, 4, 2, 8, torch.float32).allocate(5, torch.device("cpu"))
    assert cache.shape == (2, 3, 5, 4, 2, 8)
    cache.zero_()
    k_cache, v_cache = cache[0, 1], cache[1, 1]  # what the runner binds for layer 1
    slots = slot_view(k_cache, v_cache)  # [20, 2, 2, 8]
    kv = torch.randn(3, 2, 2, 8)
    where = torch.tensor([4, 9, 19])
    store_kv(kv, slots, where)
    flat_k, flat_v = k_cache.reshape(20, 2, 8), v_cache.reshape(20, 2, 8)
    assert torch.equal(flat_k[where], kv[:, 0]) and torch.equal(flat_v[where], kv[:, 1])
    assert not cache[:, 0].any() and not cache[:, 2].any()  # other layers untouched


def test_store_takes_strided_rows_of_the_qkv_output():
    slots = torch.zeros(16, 2, 3, 4)
    qkv = torch.randn(5, 9 * 4 + 2 * 3 * 4)  # [T, (Hq + 2 Hkv) * D], Hq=9, Hkv=3, D=4
    kv = qkv[:, 9 * 4 :].view(5, 2, 3, 4)
    where = torch.tensor([1, 0, 7, 15, 3])
    store_kv(kv, slots, where)
    assert torch.equal(slots[where], kv)


def test_slot_view_rejects_separately_allocated_halves():
    k_cache, v_cache = torch.zeros(5, 4, 2, 8), torch.zeros(5, 4, 2, 8)
    with pytest.raises(AssertionError, match="KVCacheSpec.allocate"):
        slot_view(k_cache, v_cache)


# float32: two ways of computing the same complex product (in place on the strided view,
# and out of place), each free to round ``ac - bd`` with or without a fused multiply-add
# and in vector or scalar code as the CPU's kernels choose: |x| < ~5 here, so a few float32
# steps (1e-6); a position off by one, another theta or the inverse rotation moves some
# element by more than 1.
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_in_place_rotary_rotates_interleaved_pairs(dtype, tol):
    t, h, d = 6, 4, 8
    freqs_cis = RotaryEmbedding(d, 10000.0)(torch.arange(3, 3 + t))  # [T, 1, D/2]
    qkv = torch.randn(t, (h + 1) * d, dtype=dtype)
    x = qkv[:, : h * d].view(t, h, d)  # strided rows, as in the model
    pairs = x.float().reshape(t, h, d // 2, 2)
    expected = torch.view_as_real(torch.view_as_complex(pairs) * freqs_cis).flatten(-2)
    untouched = qkv[:, h * d :].clone()
    apply_rotary_(x, freqs_cis)
    torch.testing.assert_close(x.float(), expected, atol=tol, rtol=tol)
    assert torch.equal(qkv[:, h * d :], untouched)
