"""rt's layers keep their submodules and parameters in the instance dict too
(layers/module.py), and every way rt registers one keeps that copy in step."""

from __future__ import annotations

import pytest
import torch
from rt.plugins.tp.layers.linear import ColumnParallelLinear
from rt.plugins.tp.layers.module import Module, mirrors_in_step
from rt.plugins.tp.loader import replace_parameters
from rt.plugins.tp.model_runner import ModelRunner
from rt.plugins.tp.parallel import ParallelContext
from torch import nn

from .tiny_models import write_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint("llama_gqa_tied", tmp_path_factory.mktemp("mirror"))


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_a_loaded_model_reads_the_registered_objects(tiny, rt_cache, quantization):
    for _ in ("checkpoint", "prepared"):  # the second load maps what the first saved
        runner = ModelRunner(tiny, ParallelContext.single(), torch.float32, "cpu", 16, quantization)
        source = runner.load_weights(use_prepared=True)
        if runner.save_thread is not None:
            runner.save_thread.join()
        assert mirrors_in_step(runner.model) == [], source
        layer = runner.model.model.layers[0]
        assert layer.self_attn.qkv_proj.weight is layer.self_attn.qkv_proj._parameters["weight"]
    assert source == "prepared"


class _Block(Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = ColumnParallelLinear(ParallelContext.single(), 4, 8)
        self.scale = nn.Parameter(torch.ones(8), requires_grad=False)
        self.register_buffer("offset", torch.zeros(8))
        self.register_parameter("bias", None)


def test_each_way_of_registering_keeps_the_copy_in_step():
    block = _Block()
    assert mirrors_in_step(block) == []
    assert "proj" in block.__dict__ and "bias" in block.__dict__  # read without __getattr__

    block.scale = nn.Parameter(torch.full((8,), 2.0), requires_grad=False)  # replaced
    block.proj = ColumnParallelLinear(ParallelContext.single(), 4, 8)
    block.add_module("extra", nn.Identity())
    replace_parameters(block, lambda p: torch.zeros(p.shape))  # as loading does
    assert mirrors_in_step(block) == []
    assert torch.equal(block.scale, torch.zeros(8))

    del block.scale
    assert "scale" not in block.__dict__ and not hasattr(block, "scale")


def test_a_stale_copy_is_reported():
    block = _Block()
    block._parameters["scale"] = nn.Parameter(torch.ones(8))  # bypasses every hook
    assert mirrors_in_step(block) == ["scale"]
