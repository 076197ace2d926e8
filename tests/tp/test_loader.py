"""The safetensors loader: sharded checkpoints, per-rank slices, dtype casts, and errors
that name the culprit tensor."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from rt.core.errors import ModelError
from rt.plugins.tp.layers.cpu_layout import logical
from rt.plugins.tp.layers.linear import QKVParallelLinear, RowParallelLinear
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext
from rt.plugins.tp.prepared_weights import tensor_bytes
from rt.plugins.tp.safetensors_format import read_header, write_file
from safetensors.torch import load_file, save_file

from .tiny_models import write_checkpoint


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    return write_checkpoint("qwen2_bias", tmp_path_factory.mktemp("qwen2"))


def load(path, ctx=None, dtype=torch.float32) -> ModelRunner:
    runner = ModelRunner(path, ctx or ParallelContext.single(), dtype, "cpu")
    runner.load_weights()
    return runner


def state(runner: ModelRunner) -> dict[str, torch.Tensor]:
    # the [out, in] matrices, whatever decode layout the CPU runner keeps them in
    return {k: logical(v).clone() for k, v in runner.model.state_dict().items()}


def rewrite(src, dst, edit) -> None:
    """Copy checkpoint ``src`` to ``dst`` with its tensors passed through ``edit``."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    single = write_checkpoint("llama3_rope_sharded", tmp_path / "a", max_shard_size="100MB")
    sharded = write_checkpoint("llama3_rope_sharded", tmp_path / "b")
    assert not (single / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, b = state(load(single)), state(load(sharded))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tp2_ranks_hold_disjoint_halves_that_rebuild_the_full_weights(qwen2_dir):
    full = load(qwen2_dir)
    ranks = [load(qwen2_dir, ParallelContext(rank=r, world_size=2)) for r in (0, 1)]
    s0, s1, sf = state(ranks[0]), state(ranks[1]), state(full)
    # column parallel (qkv: q, k and v heads of each rank), row parallel, vocab parallel
    qkv = "model.layers.0.self_attn.qkv_proj.weight"
    q, k, v = (torch.cat([s[qkv].split([32, 16, 16])[i] for s in (s0, s1)]) for i in range(3))
    torch.testing.assert_close(torch.cat([q, k, v]), sf[qkv], atol=0, rtol=0)
    o = "model.layers.1.self_attn.o_proj.weight"
    torch.testing.assert_close(torch.cat([s0[o], s1[o]], dim=1), sf[o], atol=0, rtol=0)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        torch.testing.assert_close(torch.cat([s0[name], s1[name]]), sf[name], atol=0, rtol=0)
    norm = "model.norm.weight"
    assert torch.equal(s0[norm], sf[norm]) and torch.equal(s1[norm], sf[norm])
    for r in ranks:
        assert 0.5 * full.param_bytes() <= r.param_bytes() < 0.52 * full.param_bytes()


class RecordingSlice:
    """A safetensors-like slice that records which parts of the tensor were read."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.reads = tensor, []

    def get_shape(self) -> list[int]:
        return list(self.tensor.shape)

    def __getitem__(self, index):
        self.reads.append(index)
        return self.tensor[index]


def test_a_rank_reads_only_its_own_slice():
    ctx = ParallelContext(rank=1, world_size=2)
    qkv = QKVParallelLinear(ctx, hidden_size=8, head_dim=2, total_num_heads=4, total_num_kv_heads=2)
    k = RecordingSlice(torch.arange(4 * 8.0).view(4, 8))  # 2 KV heads * head_dim 2 rows
    qkv.weight.weight_loader(qkv.weight, k, "k")
    assert k.reads == [(slice(2, 4), slice(None))]
    assert torch.equal(qkv.weight[4:6], k.tensor[2:4])
    row = RowParallelLinear(ctx, input_size=8, output_size=3)
    w = RecordingSlice(torch.arange(24.0).view(3, 8))
    row.weight.weight_loader(row.weight, w, None)
    assert w.reads == [(slice(None), slice(4, 8))]


def test_bfloat16_load_casts_and_halves_the_bytes(qwen2_dir):
    f32, bf16 = load(qwen2_dir), load(qwen2_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert bf16.param_bytes() * 2 == f32.param_bytes()
    name = "model.layers.0.mlp.gate_up_proj.weight"
    torch.testing.assert_close(state(bf16)[name].float(), state(f32)[name], atol=1e-2, rtol=1e-2)


def test_missing_tensor_is_named(qwen2_dir, tmp_path):
    rewrite(qwen2_dir, tmp_path / "m", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(
        ModelError, match=r"lacks tensor\(s\) 'model.layers.1.self_attn.k_proj.bias'"
    ):
        load(tmp_path / "m")


def test_missing_untied_lm_head_is_named(qwen2_dir, tmp_path):
    rewrite(qwen2_dir, tmp_path / "m", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ModelError, match="'lm_head.weight'"):
        load(tmp_path / "m")


def test_misshapen_tensor_names_it_and_both_shapes(qwen2_dir, tmp_path):
    def edit(t):
        t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(64, 64)

    rewrite(qwen2_dir, tmp_path / "m", edit)
    with pytest.raises(
        ModelError,
        match=r"'model.layers.0.mlp.up_proj.weight': expected shape \[128, 64\], "
        r"the checkpoint has \[64, 64\]",
    ):
        load(tmp_path / "m")


def test_unexpected_tensor_is_named(qwen2_dir, tmp_path):
    def edit(t):
        t["model.layers.0.mlp.extra.weight"] = torch.zeros(3)

    rewrite(qwen2_dir, tmp_path / "m", edit)
    with pytest.raises(ModelError, match="'model.layers.0.mlp.extra.weight' matches no parameter"):
        load(tmp_path / "m")


def test_folder_without_weights_or_config_is_an_error(qwen2_dir, tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        ModelRunner(tmp_path, ParallelContext.single())
    shutil.copy(qwen2_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match=r"no \*.safetensors weights"):
        load(tmp_path)


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _damaged(qwen2_dir, tmp_path, damage) -> Path:
    """A copy of the checkpoint whose model.safetensors went through ``damage(bytes)``."""
    shutil.copytree(qwen2_dir, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    return path


def test_truncated_checkpoint_names_the_file_the_tensor_and_both_sizes(qwen2_dir, tmp_path):
    path = _damaged(qwen2_dir, tmp_path, lambda raw: raw[:-100])
    size = path.stat().st_size
    with pytest.raises(ModelError) as e:
        load(tmp_path / "m")
    message = str(e.value)
    assert message.startswith(f"{path} is truncated: the header says tensor '")
    assert f"ends at byte {size + 100} but the file has {size} bytes" in message
    assert message.endswith("; re-download or re-convert it") and "\n" not in message


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda raw: raw[:8] + b"{garbage" + raw[16:], "the header is not JSON"),
        (lambda raw: struct.pack("<Q", 1 << 40) + raw[8:], "its header length field says"),
        (lambda raw: raw[:5], "is truncated: it has 5 bytes, fewer than the 8-byte"),
        (lambda raw: raw[:8] + raw[8:100], "is truncated: the header says it is"),
        (lambda raw: raw + b"\0" * 8, "has 8 bytes after the last tensor's data"),
    ],
    ids=["not-json", "huge-length", "no-length", "short-header", "trailing-bytes"],
)
def test_damaged_checkpoint_is_a_model_error_naming_the_file(qwen2_dir, tmp_path, damage, what):
    path = _damaged(qwen2_dir, tmp_path, damage)
    with pytest.raises(ModelError, match=re.escape(what)) as e:
        load(tmp_path / "m")
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype 'Q4'"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12 bytes but"),
        ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "not a list of sizes"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "not [begin, end]"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}, "leaves a gap before it"),
    ],
)
def test_header_entries_are_checked_against_their_spans(tmp_path, entry, what):
    path = tmp_path / "w.safetensors"
    path.write_bytes(_raw_safetensors({"w": entry}, b"\0" * 16))
    with pytest.raises(ModelError, match=re.escape(what)):
        read_header(path)


def test_written_file_reads_back_with_safetensors_and_passes_the_checks(tmp_path):
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "c": torch.arange(5, dtype=torch.uint8),
        "d": torch.arange(3, dtype=torch.int64),
    }
    path = tmp_path / "w.safetensors"
    write_file(path, {k: tensor_bytes(v) for k, v in tensors.items()}, {"format": "pt"})
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    for name, t in header.tensors.items():  # each tensor aligned to its element size
        assert (header.data_start + t.begin) % tensors[name].element_size() == 0
    back = load_file(path)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
