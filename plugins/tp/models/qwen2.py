"""Qwen2: the Llama architecture with a q/k/v bias (``ModelConfig.qkv_bias`` is always
true for it) and no o_proj bias; the layers are shared with Llama."""

from __future__ import annotations

from rt.plugins.tp.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    pass
