"""The CPU decode layout: split row-major blocks and 2-D column- or row-major weights
compute what the plain ``[out, in]`` matrix does (to float32 rounding: kernels sum in
their own order), and prepared weights map back to the same layout, bit for bit."""

from __future__ import annotations

import pytest
import torch
from rt.plugins.tp.layers.cpu_layout import (
    embedding,
    from_storage,
    linear,
    logical,
    logical_shape,
    module_linear,
    split_weight,
    storage_form,
)
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext

from .tiny_models import write_checkpoint


def assert_linear(got, x, w, bias):
    """``got`` is ``x w^T + b`` to within float32 rounding for any order of summation:
    ``gamma_n * (|x| |w|^T + |b|)`` with ``n = in + 1`` terms (Higham, Accuracy and Stability
    of Numerical Algorithms, 3.1), a bound every kernel meets on every CPU; a weight
    laid out wrong is off by whole products, far outside it."""
    x64, w64 = x.double(), w.double()
    b64 = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    n = x.shape[-1] + 1
    gamma = n * 2**-24 / (1 - n * 2**-24)
    bound = gamma * (x64.abs() @ w64.abs().t() + b64.abs())
    err = (got.double() - (x64 @ w64.t() + b64)).abs()
    assert (err <= bound).all(), f"off by {(err / bound).max().item():.3g} x the rounding bound"


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("shape", [(192, 64), (64, 192), (96, 96), (100, 64)])
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_linear_in_every_layout_is_x_w_t_to_rounding(parts, shape, tokens):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    b = torch.randn(shape[0], generator=gen)
    x = torch.randn(tokens, shape[1], generator=gen)
    laid = split_weight(w, parts)
    assert torch.equal(logical(laid), w)
    assert logical_shape(laid) == shape
    for bias in (None, b):
        assert_linear(linear(x, laid, bias), x, w, bias)
    # one row out of place is far outside the bound
    with pytest.raises(AssertionError, match="rounding bound"):
        assert_linear(linear(x, split_weight(w.roll(1, 0), parts), b), x, w, b)


@pytest.mark.parametrize("parts", [1, 2])
def test_module_linear_keeps_the_transposed_view_until_the_weight_changes(parts):
    gen = torch.Generator().manual_seed(1)
    module = torch.nn.Linear(64, 192)
    w, b = module.weight.data.clone(), module.bias.data.clone()
    x = torch.randn(3, 64, generator=gen)
    for bias in (None, b):
        assert_linear(module_linear(module, x, module.weight, bias), x, w, bias)
    kept = module.__dict__.get("_weight_t")
    assert (kept is not None) == (module.weight.dim() == 2)
    module.weight.data = split_weight(w, parts)  # re-laid out: the kept view must not be used
    assert_linear(module_linear(module, x, module.weight, b), x, w, b)
    module.weight.data = torch.zeros_like(w).t().contiguous().t()  # same shape, new storage
    assert module_linear(module, x, module.weight, None).abs().max() == 0
    x3 = torch.randn(2, 3, 64, generator=gen)  # more than 2-D: F.linear's broadcasting
    assert module_linear(module, x3, module.weight, None).shape == (2, 3, 192)


def test_split_layout_depends_on_shape_and_divisibility():
    tall, wide = torch.randn(192, 64), torch.randn(64, 192)
    # split blocks are row-major whatever the shape: the [P, in, h] view of [P, h, in]
    for w, shape in ((tall, (2, 64, 96)), (wide, (2, 192, 32))):
        laid = split_weight(w, 2)
        assert laid.shape == shape and laid.transpose(1, 2).is_contiguous()
    assert split_weight(torch.randn(100, 64), 3).dim() == 2  # 100 rows do not split in 3
    assert split_weight(torch.randn(40, 64), 2).dim() == 2  # 20-column blocks are too narrow
    assert split_weight(tall, 1).t().is_contiguous()  # one part, tall: column-major
    assert split_weight(wide, 1).is_contiguous()  # one part, wide: row-major


@pytest.mark.parametrize("parts", [1, 2])
def test_embedding_reads_rows_from_a_split_head(parts):
    w = torch.randn(256, 48)
    ids = torch.tensor([0, 5, 127, 128, 255, 5])
    assert torch.equal(embedding(ids, split_weight(w, parts)), w[ids])


@pytest.mark.parametrize("shape", [(192, 64), (64, 192)])
@pytest.mark.parametrize("parts", [1, 2])
def test_storage_form_round_trips_as_a_view(shape, parts):
    laid = split_weight(torch.randn(shape), parts)
    stored, tag = storage_form(laid)
    assert stored.is_contiguous() and stored.data_ptr() == laid.data_ptr()
    back = from_storage(stored, tag)
    assert back.shape == laid.shape and back.stride() == laid.stride()


def test_prepared_weights_keep_the_layout_and_the_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path / "cache"))
    model_dir = write_checkpoint("llama_gqa_tied", tmp_path / "m")
    runs = []
    for expected in ("checkpoint", "prepared"):
        runner = ModelRunner(model_dir, ParallelContext.single(), torch.float32, "cpu")
        assert runner.load_weights(use_prepared=True) == expected
        if runner.save_thread is not None:
            runner.save_thread.join()
        runs.append(runner)
    first, second = (dict(r.model.named_parameters()) for r in runs)
    for name, p in first.items():
        q = second[name]
        assert q.shape == p.shape and q.stride() == p.stride(), name
        assert torch.equal(q, p), name
