"""Llama (and Mistral, SmolLM, Qwen2 by config) with tensor-parallel layers."""

from __future__ import annotations

from typing import Any

import torch
from rt.plugins.tp.layers.activation import SiluAndMul
from rt.plugins.tp.layers.attention import Attention
from rt.plugins.tp.layers.attention_metadata import AttentionMetadata
from rt.plugins.tp.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from rt.plugins.tp.layers.layernorm import RMSNorm
from rt.plugins.tp.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from rt.plugins.tp.layers.module import Module
from rt.plugins.tp.layers.rotary import (
    RotaryEmbedding,
    apply_rotary,
    apply_rotary_,
    interleave_rows,
)
from rt.plugins.tp.model_config import ModelConfig
from rt.plugins.tp.parallel import ParallelContext
from torch import nn


class LlamaAttention(Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext) -> None:
        super().__init__()
        d = config.head_dim
        self.qkv_proj = QKVParallelLinear(
            ctx,
            config.hidden_size,
            d,
            config.num_attention_heads,
            config.num_key_value_heads,
            bias=config.qkv_bias,
        )
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = d
        self.o_proj = RowParallelLinear(
            ctx, config.num_attention_heads * d, config.hidden_size, bias=config.o_proj_bias
        )
        self.attn = Attention(self.num_heads, self.num_kv_heads, d, scale=d**-0.5)

    def interleave_rope_rows(self) -> None:
        """After loading: put each q/k head's rotary pairs side by side (see rotary.py)."""
        q_rows = self.num_heads * self.head_dim
        qk_rows = q_rows + self.num_kv_heads * self.head_dim
        for param in (self.qkv_proj.weight, self.qkv_proj.bias):
            if param is None:
                continue
            data = param.data
            data[:q_rows] = interleave_rows(data[:q_rows], self.num_heads, self.head_dim)
            data[q_rows:qk_rows] = interleave_rows(
                data[q_rows:qk_rows], self.num_kv_heads, self.head_dim
            )

    def forward(self, x: torch.Tensor, rope: Any, meta: AttentionMetadata | None) -> torch.Tensor:
        # x: [T, H] -> qkv: [T, (Hq + 2 Hkv) * D] (local heads), rotated in place
        d, hq, hkv = self.head_dim, self.num_heads, self.num_kv_heads
        qkv = self.qkv_proj(x)
        if meta is None:  # a compiled step: rope is (cos, sin); attention is opaque
            qk = apply_rotary(qkv[:, : (hq + hkv) * d].view(-1, hq + hkv, d), *rope)
            v = qkv[:, (hq + hkv) * d :].view(-1, hkv, d)
            kv = torch.stack((qk[:, hq:], v), dim=1)  # [T, 2, Hkv, D]
            o = torch.ops.rt.paged_attention(qk[:, :hq], kv, self.attn.layer_index)
            return self.o_proj(o.flatten(1))
        freqs_cis = rope
        apply_rotary_(qkv[:, : (hq + hkv) * d].view(-1, hq + hkv, d), freqs_cis)
        q = qkv[:, : hq * d].view(-1, hq, d)  # [T, Hq, D]
        kv = qkv[:, hq * d :].view(-1, 2, hkv, d)  # [T, 2, Hkv, D]: the cache's slot layout
        o = self.attn(q, kv, meta)  # [T, Hq, D]
        return self.o_proj(o.flatten(1))


class LlamaMLP(Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_up_proj = MergedColumnParallelLinear(ctx, h, [i, i], bias=bias)
        self.down_proj = RowParallelLinear(ctx, i, h, bias=bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, ctx)
        self.mlp = LlamaMLP(config, ctx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        rope: Any,
        meta: AttentionMetadata | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, H]; the residual add is fused into the next norm
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, rope, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(Module):
    def __init__(self, config: ModelConfig, ctx: ParallelContext) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(ctx, config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, ctx) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata | None
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden: [T, H]. Eager steps pass the step's
        # metadata; a compiled one passes None and runs attention as an opaque operator
        # that finds the metadata itself (layers/compiled_ops.py).
        if meta is None:
            rope = self.rotary_emb.cos_sin(positions)  # ([T, 1, D/2],) * 2
        else:
            rope = self.rotary_emb(positions)  # [T, 1, D/2] complex, shared by all layers
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual, rope, meta)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(Module):
    # checkpoint module -> (module in this model, shard id its weight_loader understands)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, ctx: ParallelContext) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, ctx)
        self.lm_head = ParallelLMHead(ctx, config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def process_weights_after_loading(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.interleave_rope_rows()

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, H] -> logits: [N, V] (full vocabulary on every rank)
        return self.lm_head(hidden)
