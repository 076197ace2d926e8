"""Linear layers that own their tensor-parallel sharding (Megatron style).

Column-parallel layers split the output features across ranks and need no
communication; row-parallel layers split the input features and all-reduce the
partial sums. Each parameter carries a ``weight_loader(param, src, shard_id=None)``
that reads only this rank's slice of the checkpoint tensor ``src``.
"""

from __future__ import annotations

import torch
from rt.plugins.tp.layers.compiled_ops import context_handle, tp_all_reduce
from rt.plugins.tp.layers.cpu_layout import module_linear
from rt.plugins.tp.layers.module import Module
from rt.plugins.tp.layers.weight_source import WeightSource, check_shape, read_narrow
from rt.plugins.tp.parallel import ParallelContext
from torch import nn


def divide(numerator: int, denominator: int) -> int:
    assert numerator % denominator == 0, f"{numerator} is not divisible by {denominator}"
    return numerator // denominator


class LinearBase(Module):
    decode_layout = True  # CPU ranks re-lay the weight out after loading (cpu_layout.py)

    def __init__(self, ctx: ParallelContext, input_size: int, output_size: int, bias: bool) -> None:
        super().__init__()
        self.ctx = ctx
        self.tp_rank, self.tp_size = ctx.rank, ctx.world_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        raise NotImplementedError


class ColumnParallelLinear(LinearBase):
    """``y = x W^T``, W split by output rows: rank r holds rows ``[r*O/tp, (r+1)*O/tp)``."""

    def __init__(self, ctx: ParallelContext, input_size: int, output_size: int, bias: bool = False):
        super().__init__(ctx, input_size, divide(output_size, ctx.world_size), bias)

    def _load_rows(
        self, param_rows: torch.Tensor, src: WeightSource, full_rows: int, is_bias: bool
    ) -> None:
        # param_rows: this rank's destination rows; src: the full checkpoint tensor
        full = (full_rows,) if is_bias else (full_rows, self.weight.shape[1])
        check_shape(src, full)
        size = param_rows.shape[0]
        param_rows.copy_(read_narrow(src, 0, self.tp_rank * size, size))

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        rows = param.shape[0]
        self._load_rows(param.data, src, rows * self.tp_size, param.dim() == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return module_linear(self, x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate/up); shard_id is the index."""

    def __init__(
        self, ctx: ParallelContext, input_size: int, output_sizes: list[int], bias: bool = False
    ):
        self.output_sizes = list(output_sizes)
        super().__init__(ctx, input_size, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        assert isinstance(shard_id, int), shard_id
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        size = self.output_sizes[shard_id] // self.tp_size
        dst = param.data.narrow(0, offset, size)
        self._load_rows(dst, src, self.output_sizes[shard_id], param.dim() == 1)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; each rank holds its heads of each."""

    def __init__(
        self,
        ctx: ParallelContext,
        hidden_size: int,
        head_dim: int,
        total_num_heads: int,
        total_num_kv_heads: int,
        bias: bool = False,
    ):
        self.head_dim = head_dim
        self.total_num_heads, self.total_num_kv_heads = total_num_heads, total_num_kv_heads
        self.num_heads = divide(total_num_heads, ctx.world_size)
        self.num_kv_heads = divide(total_num_kv_heads, ctx.world_size)
        output_size = (total_num_heads + 2 * total_num_kv_heads) * head_dim
        super().__init__(ctx, hidden_size, output_size, bias)

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size, total_heads = {
            "q": (0, q_size, self.total_num_heads),
            "k": (q_size, kv_size, self.total_num_kv_heads),
            "v": (q_size + kv_size, kv_size, self.total_num_kv_heads),
        }[shard_id]
        dst = param.data.narrow(0, offset, size)
        self._load_rows(dst, src, total_heads * self.head_dim, param.dim() == 1)


class RowParallelLinear(LinearBase):
    """``y = x W^T`` with W split by input columns; partial sums are all-reduced."""

    def __init__(self, ctx: ParallelContext, input_size: int, output_size: int, bias: bool = False):
        super().__init__(ctx, divide(input_size, ctx.world_size), output_size, bias)
        self.reduce_handle = context_handle(ctx)

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is replicated and added once, on rank 0
            check_shape(src, tuple(param.shape))
            param.data.copy_(read_narrow(src, 0, 0, param.shape[0]))
            return
        cols = param.shape[1]
        check_shape(src, (param.shape[0], cols * self.tp_size))
        param.data.copy_(read_narrow(src, 1, self.tp_rank * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, I_local] -> y: [T, O]
        y = module_linear(self, x, self.weight, self.bias if self.tp_rank == 0 else None)
        return tp_all_reduce(self.ctx, self.reduce_handle, y)
