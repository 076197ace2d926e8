"""Vocabulary-parallel embedding and LM head.

The vocabulary is split in ``ceil(V / tp)`` rows per rank; the last rank's tail past
``V`` is zero padding, so V need not be divisible by the TP size.
"""

from __future__ import annotations

import torch
from rt.plugins.tp.layers.compiled_ops import context_handle, tp_all_reduce
from rt.plugins.tp.layers.cpu_layout import embedding, module_linear
from rt.plugins.tp.layers.module import Module
from rt.plugins.tp.layers.weight_source import WeightSource, check_shape, read_narrow
from rt.plugins.tp.parallel import ParallelContext
from torch import nn


class VocabParallelEmbedding(Module):
    def __init__(self, ctx: ParallelContext, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.ctx = ctx
        self.num_embeddings = num_embeddings
        self.rows_per_rank = -(-num_embeddings // ctx.world_size)
        self.vocab_start = min(ctx.rank * self.rows_per_rank, num_embeddings)
        self.vocab_end = min(self.vocab_start + self.rows_per_rank, num_embeddings)
        self.weight = nn.Parameter(
            torch.empty(self.rows_per_rank, embedding_dim), requires_grad=False
        )
        self.weight.weight_loader = self.weight_loader
        self.reduce_handle = context_handle(ctx)

    def weight_loader(self, param: nn.Parameter, src: WeightSource, shard_id=None) -> None:
        check_shape(src, (self.num_embeddings, param.shape[1]))
        n = self.vocab_end - self.vocab_start
        param.data[:n].copy_(read_narrow(src, 0, self.vocab_start, n))
        param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: [T] -> [T, H]
        if self.ctx.world_size == 1:
            return embedding(input_ids, self.weight)
        owned = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = torch.where(owned, input_ids - self.vocab_start, 0)
        y = embedding(local_ids, self.weight).masked_fill_(~owned.unsqueeze(-1), 0)
        return tp_all_reduce(self.ctx, self.reduce_handle, y)


class ParallelLMHead(VocabParallelEmbedding):
    """Projects hidden states to logits; every rank returns the full-vocabulary logits.

    A tied embedding shares this weight, so it is looked up in the head's layout."""

    decode_layout = True  # CPU ranks re-lay the weight out after loading (cpu_layout.py)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, H] -> local: [N, V_local] -> logits: [N, V]
        local = module_linear(self, hidden, self.weight, None)
        return self.ctx.all_gather_last_dim(local)[..., : self.num_embeddings]
