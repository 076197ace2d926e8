"""Model classes by HF ``architectures`` name."""

from __future__ import annotations

from rt.core.errors import ModelError
from rt.plugins.tp.models.llama import LlamaForCausalLM
from rt.plugins.tp.models.qwen2 import Qwen2ForCausalLM
from torch import nn

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
}


def get_model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        raise ModelError(
            f"architecture {architecture!r} is not supported; supported: {supported}"
        ) from None
