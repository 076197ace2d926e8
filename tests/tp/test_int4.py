"""Weight-only int4 on CPU: exact for Q4_1 weights, the kernel multiplies by what
``dequantize`` says, the model matches transformers on those weights, and prepared
int4 weights map back."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from rt.core.errors import ModelError
from rt.core.step import SamplingParams, SeqStep, StepMetadata
from rt.plugins.tp import weights_plan
from rt.plugins.tp.layers import int4
from rt.plugins.tp.layers.int4 import (
    GROUP_SIZE,
    INT4_MAX_TOKENS,
    _groups,
    dequantize,
    int4_linear,
    keeps_dense_copy,
    quantize,
    supports,
)
from rt.plugins.tp.model_config import ModelConfig
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext
from safetensors.torch import load_file, save_file
from torch import nn

from .tiny_models import (
    BlockTables,
    assert_same_picks,
    full_logits,
    load_reference,
    random_prompt,
    write_checkpoint,
)

NUM_BLOCKS, BLOCK_SIZE = 32, 4
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# bfloat16 rounding has moved these logits by up to 0.03 from float32 ones (0.024 against
# transformers, 0.030 between TP=2 and TP=1): greedy picks are compared where the best
# token leads by more than twice that (tiny_models.assert_same_picks).
PICK_MARGIN = 0.06


def _q4_1_like(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights the way llama.cpp's Q4_1 stores them: per 32 inputs, ``d * q + m``
    with q in 0..15, every block using both 0 and 15."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // GROUP_SIZE, GROUP_SIZE), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(n, k // GROUP_SIZE, 1, generator=g) * 0.01 + 1e-3
    m = torch.randn(n, k // GROUP_SIZE, 1, generator=g) * 0.05
    return (d * q + m).reshape(n, k), q.reshape(n, k).to(torch.int32)


def test_quantize_recovers_q4_1_codes_exactly():
    w, q = _q4_1_like(64, 128, seed=0)
    codes, scale_zero = _groups(w, GROUP_SIZE)
    assert torch.equal(codes.reshape(q.shape).to(torch.int32), q)
    assert scale_zero.shape == (128 // GROUP_SIZE, 64, 2) and scale_zero.dtype == torch.bfloat16
    # only scale and zero (the value at q = 8) are rounded, to bfloat16's 8 bits
    scale, zero = scale_zero.float().unbind(-1)  # [K/32, N] each
    bound = (8 * scale + zero.abs()).t() * 2**-8  # [N, K/32]
    err = (dequantize(w) - w).abs().reshape(64, -1, GROUP_SIZE).amax(-1)
    assert (err <= bound).all()


@pytest.mark.parametrize("tokens", [1, 5, INT4_MAX_TOKENS])
def test_kernel_multiplies_by_the_dequantized_matrix(tokens):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 64, generator=g)
    x, bias = torch.randn(tokens, 64, generator=g), torch.randn(96, generator=g)
    packed, scale_zero, dense = quantize(w)
    assert packed.shape == (96, 32) and packed.dtype == torch.uint8
    # a poisoned dense copy shows that steps this short never read it
    y = int4_linear(x, packed, scale_zero, torch.full_like(dense, float("nan")), GROUP_SIZE, bias)
    expected = x.bfloat16().float() @ dequantize(w).t() + bias
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, atol=0.05, rtol=0.01)
    # and the matrix is a 4-bit approximation of w (half a step of a group's range at
    # most, plus bfloat16 rounding), not w itself
    assert 0 < (dequantize(w) - w).abs().max() < 1.1 * w.abs().max() / 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5, INT4_MAX_TOKENS])
def test_kernel_takes_a_strided_view(tokens, dtype):
    # As a bfloat16 model's norm hands it over: the first half of [T, 2K], strided
    # for T > 1 (the kernel itself refuses a non-contiguous x).
    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, 64, generator=g)
    x = torch.randn(tokens, 128, generator=g).to(dtype).narrow(-1, 0, 64)
    packed, scale_zero, dense = quantize(w, dense_copy=False)
    y = int4_linear(x, packed, scale_zero, dense, GROUP_SIZE, None)
    assert y.dtype == dtype
    expected = x.bfloat16().float() @ dequantize(w).t()
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.01)


def test_longer_steps_multiply_by_the_dense_bfloat16_copy():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, 64, generator=g)
    x = torch.randn(INT4_MAX_TOKENS + 1, 64, generator=g)
    packed, scale_zero, dense = quantize(w, dense_copy=True)
    assert dense.dtype == torch.bfloat16 and torch.equal(dense, dequantize(w).bfloat16())
    y = int4_linear(x, packed.zero_(), scale_zero, dense, GROUP_SIZE, None)  # packed unused
    expected = x.bfloat16().float() @ dequantize(w).t()
    torch.testing.assert_close(y, expected, atol=0.05, rtol=0.01)


def test_without_native_bfloat16_every_step_runs_the_int4_kernel():
    # An AVX2-only CPU emulates bfloat16 GEMMs (slower than the int4 kernel): no copy.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(96, 64, generator=g)
    x = torch.randn(4 * INT4_MAX_TOKENS, 64, generator=g)
    packed, scale_zero, dense = quantize(w, dense_copy=False)
    assert dense.numel() == 0
    y = int4_linear(x, packed, scale_zero, dense, GROUP_SIZE, None)
    torch.testing.assert_close(y, x.bfloat16().float() @ dequantize(w).t(), atol=0.05, rtol=0.01)


def test_supports_names_the_kernel_constraints():
    assert supports(96, 64)
    assert not supports(100, 64)  # output features are packed by 16
    assert not supports(96, 48)  # input features come in whole groups of 32


def _dequantized_copy(src, dst):
    """The checkpoint with every decoder matrix replaced by what int4 stands for."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.safetensors"):
        tensors = load_file(path)
        for name, t in tensors.items():
            if name.split(".")[-2] in LINEARS and t.dim() == 2 and supports(*t.shape):
                tensors[name] = dequantize(t).contiguous()
        save_file(tensors, path, metadata={"format": "pt"})
    return dst


def _runner(path, quantization="int4", use_prepared=False):
    runner = ModelRunner(
        path, ParallelContext.single(), torch.float32, "cpu", BLOCK_SIZE, quantization
    )
    source = runner.load_weights(use_prepared=use_prepared)
    runner.allocate_kv_cache(NUM_BLOCKS)
    return runner, source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    path = write_checkpoint("llama_gqa_tied", tmp_path_factory.mktemp("int4"))
    return path, _dequantized_copy(path, tmp_path_factory.mktemp("dq") / "model")


def test_int4_model_matches_transformers_on_the_dequantized_weights(tiny):
    path, dequantized = tiny
    runner, _ = _runner(path)
    assert runner.quantization == "int4"
    packed = [m for m in runner.model.modules() if "int4_group" in m.__dict__]
    assert len(packed) == 4 * runner.model_config.num_hidden_layers
    assert runner.describe_quantization() == f"int4 ({len(packed)} of {len(packed)} linear layers)"
    dense, _ = _runner(path, quantization="none")
    assert runner.param_bytes() < dense.param_bytes()
    # 4-bit codes and their scales: 0.625 bytes a weight; the bfloat16 copy, where the
    # CPU has native bfloat16, 2 more
    per_weight = 2.625 if keeps_dense_copy() else 0.625
    for m in packed:
        n, k = m.weight.shape[0], 2 * m.weight.shape[1]
        held = sum(p.numel() * p.element_size() for p in m.parameters())
        assert held == n * k * per_weight

    prompt = random_prompt(13, runner.model_config.vocab_size, seed=3)
    ours = full_logits(runner, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    with torch.no_grad():
        theirs = load_reference(dequantized)(torch.tensor([prompt])).logits[0]
        original = load_reference(path)(torch.tensor([prompt])).logits[0]
    # Only the activations' rounding to bfloat16 at each matmul separates them (logits
    # up to ~3 here, ~0.02 apart)...
    torch.testing.assert_close(ours, theirs, atol=0.04, rtol=0.02)
    assert_same_picks(ours, theirs, PICK_MARGIN)
    # ...while the float32 weights give other logits: the comparison can tell.
    assert (theirs - original).abs().max() > 10 * (ours - theirs).abs().max()

    # One token at a time (the int4 kernel; 13 tokens at once used the bfloat16 copy),
    # fed the same prompt: the same logits within the same precision.
    greedy = SamplingParams(temperature=0.0, max_tokens=1)
    table = BlockTables(NUM_BLOCKS, BLOCK_SIZE).cover(1, len(prompt))
    rows = []
    for pos, token in enumerate(prompt):
        step = StepMetadata.from_seqs(pos, [SeqStep(1, (token,), pos, table, True, 0, greedy)])
        rows.append(runner.run(step)[0])
    torch.testing.assert_close(torch.stack(rows), theirs, atol=0.04, rtol=0.02)
    assert_same_picks(torch.stack(rows), theirs, PICK_MARGIN)


# Logits of a model and of its mapped-back copy: the same weights, but the mapped ones sit
# at other addresses (a file mapping's alignment), and MKL's float32 kernels may take
# another path for them (here the tied float32 LM head's; the int4 and bfloat16 decoder
# matched bitwise). On a 2-core EPYC with split weights that moved these logits
# (|x| <= ~3.4, a float32 step 2.4e-7 there) by up to 4.8e-7, and other kernel paths
# (1 or 2 threads, split or 2-D weights) by up to 1.7e-6; one layer's scales one
# bfloat16 step off moved them by 1e-2 or more, a misplaced row or scale by ~1 or more.
LOGITS_ATOL = 1e-4


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s memory as integers of the same width: equal bits, not just equal values."""
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16}.get(t.dtype, t.dtype))


def _logits_with(runner, module, name, tensor, prompt):
    """``runner``'s logits with ``module.<name>`` replaced by ``tensor`` for the call."""
    held = getattr(module, name)
    setattr(module, name, nn.Parameter(tensor, requires_grad=False))
    try:
        return full_logits(runner, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    finally:
        setattr(module, name, held)


@pytest.mark.parametrize("dense_copy", [True, False], ids=["bf16-copy", "no-copy"])
def test_prepared_int4_weights_map_back_unchanged(tiny, rt_cache, monkeypatch, dense_copy):
    # Both kinds of machine, whichever this one is: the layers and the prepared key
    # (another folder for each) follow rt.core.host.native_bf16.
    monkeypatch.setattr(int4, "native_bf16", lambda: dense_copy)
    monkeypatch.setattr(weights_plan, "native_bf16", lambda: dense_copy)
    path, _ = tiny
    first, source = _runner(path, use_prepared=True)
    assert source == "checkpoint"
    first.save_thread.join()
    second, source = _runner(path, use_prepared=True)
    assert source == "prepared"
    assert second.describe_quantization() == first.describe_quantization()

    # What was saved is what maps back, bit for bit and in the same memory order: packed
    # codes, scale/zero tables, bfloat16 copies, and the dense tensors around them.
    quantized = dict(first.model.named_parameters())
    mapped = dict(second.model.named_parameters())
    assert mapped.keys() == quantized.keys()
    assert sum(name.endswith("weight_scale_zero") for name in mapped) == first.int4_layers > 0
    for name, t in quantized.items():
        m = mapped[name]
        assert (m.dtype, m.shape, m.stride()) == (t.dtype, t.shape, t.stride()), name
        assert torch.equal(_bits(m), _bits(t)), name

    # Computed from them, logits agree within LOGITS_ATOL, not bitwise. 9 tokens use
    # the bfloat16 copies (if kept), INT4_MAX_TOKENS the int4 kernel (codes, scale/zero).
    vocab = first.model_config.vocab_size
    long, short = random_prompt(9, vocab, seed=4), random_prompt(INT4_MAX_TOKENS, vocab, seed=6)
    blocks = BlockTables(NUM_BLOCKS, BLOCK_SIZE)
    expected = {len(p): full_logits(first, p, blocks) for p in (long, short)}

    def check(logits, prompt):
        torch.testing.assert_close(logits, expected[len(prompt)], atol=LOGITS_ATOL, rtol=0)

    check(full_logits(second, long, blocks), long)
    check(full_logits(second, short, blocks), short)
    # ...a bound that any layer's tensors mapped wrongly would break: scales one
    # bfloat16 step off, packed rows a row out of place, the copy read transposed.
    bf16_step = torch.tensor([1 + 2**-7, 1.0], dtype=torch.bfloat16)
    for module in (m for m in second.model.modules() if "int4_group" in m.__dict__):
        wrong = [
            ("weight_scale_zero", module.weight_scale_zero * bf16_step, short),
            ("weight", module.weight.roll(1, 0), short),
        ]
        if dense_copy:
            copy = module.weight_dense
            wrong.append(("weight_dense", copy.t().reshape(copy.shape), long))
        for name, tensor, prompt in wrong:
            with pytest.raises(AssertionError):
                check(_logits_with(second, module, name, tensor, prompt), prompt)

    # the dense entry is a different one: switching quantization off never maps int4
    dense, _ = _runner(path, quantization="none", use_prepared=True)
    assert dense.describe_quantization() == "none" and dense.int4_layers == 0


def test_layers_the_kernel_cannot_pack_stay_dense(tmp_path):
    # hidden 48 is not a whole number of 32-input groups: every matrix reading it stays
    # float32, the down projection (128 inputs) is packed; the model still runs.
    path = write_checkpoint("llama_odd", tmp_path)
    runner, _ = _runner(path)
    packed = {name for name, m in runner.model.named_modules() if "int4_group" in m.__dict__}
    assert packed and all(name.endswith("down_proj") for name in packed)
    assert (
        runner.describe_quantization() == f"int4 ({len(packed)} of {4 * len(packed)} linear layers)"
    )
    prompt = random_prompt(7, runner.model_config.vocab_size, seed=5)
    logits = full_logits(runner, prompt, BlockTables(NUM_BLOCKS, BLOCK_SIZE))
    assert torch.isfinite(logits).all()


def _config(source_quantization):
    data = json.loads(
        '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,'
        ' "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 256}'
    )
    if source_quantization:
        data["rt_source_quantization"] = source_quantization
    return ModelConfig.from_hf_dict(data)


def test_quantization_setting_resolves_per_checkpoint_and_device():
    q4 = _config("Q4_1")
    assert q4.quantization("auto", "cpu") == "int4"
    assert q4.quantization("auto", "cuda") == "none"  # the CPU kernel only
    assert q4.quantization("none", "cpu") == "none"
    plain = _config(None)
    assert plain.quantization("auto", "cpu") == "none"
    assert _config("Q8_0").quantization("auto", "cpu") == "none"
    assert plain.quantization("int4", "cpu") == "int4"
    with pytest.raises(ModelError, match="CPU ranks only.*--quantization none"):
        plain.quantization("int4", "cuda")
