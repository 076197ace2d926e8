"""The model's shape, parsed from an HF ``config.json`` (no transformers needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
from rt.core.errors import ModelError

_DTYPES = {"float32": "float32", "float": "float32", "bfloat16": "bfloat16"}
_DTYPES |= {"float16": "float16", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}

# Architectures whose attention always carries a q/k/v bias, whatever the config says.
_ALWAYS_QKV_BIAS = {"Qwen2ForCausalLM"}


@attrs.frozen
class RopeScaling:
    """Llama 3 style frequency scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@attrs.frozen
class ModelConfig:
    architecture: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_proj_bias: bool
    mlp_bias: bool
    dtype: str  # "float32", "bfloat16" or "float16": the checkpoint's own
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    sliding_window: int | None = None
    # The GGUF type of the decoder's matrices when rt converted the checkpoint from
    # GGUF ("Q4_1"; gguf_convert.py), else None.
    source_quantization: str | None = None

    @property
    def max_model_len(self) -> int:
        """Longest sequence served exactly (a sliding window caps it: we attend fully)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @property
    def torch_dtype(self):  # -> torch.dtype; torch is imported lazily to keep this file light
        import torch

        return getattr(torch, self.dtype)

    def check_tp(self, tp: int) -> None:
        """Raise ModelError unless ``tp`` splits the query heads, the KV heads and the MLP
        evenly (KV heads are not replicated, so TP may not exceed their number)."""
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if tp < 1:
            raise ModelError(f"tp={tp}: the TP size must be at least 1")
        for what, n in (("num_attention_heads", heads), ("num_key_value_heads", kv)):
            if n % tp:
                raise ModelError(
                    f"tp={tp} does not divide {what}={n} of {self.architecture}; "
                    f"use a TP size that divides both {heads} and {kv}"
                )
        if self.intermediate_size % tp:
            raise ModelError(
                f"tp={tp} does not divide intermediate_size={self.intermediate_size} "
                f"of {self.architecture}; use a TP size that divides it"
            )

    def quantization(self, setting: str, device_type: str) -> str:
        """What ``model.quantization`` (``setting``) means for this checkpoint on a
        ``device_type`` rank: "int4" or "none".

        "auto" is int4 on CPU for a checkpoint converted from Q4_1 GGUF (exact there,
        see layers/int4.py) and none otherwise; "int4" asks for it on any checkpoint
        (round-to-nearest over groups of 32) and needs a CPU rank.
        """
        if setting == "none":
            return "none"
        if device_type != "cpu":
            if setting == "int4":
                raise ModelError(
                    f"--quantization int4 runs on CPU ranks only (torch's int4 CPU kernel); "
                    f"this rank is on {device_type}: use --quantization none or auto"
                )
            return "none"
        if setting == "int4" or self.source_quantization == "Q4_1":
            return "int4"
        return "none"

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ModelError(f"no config.json in {str(model_dir)!r}; is it an HF model folder?")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{str(path)!r} is not valid JSON: {e}") from e
        return cls.from_hf_dict(data)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        archs = d.get("architectures") or []
        if not archs:
            raise ModelError("config.json has no 'architectures'; cannot pick a model class")
        arch = archs[0]
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for key in (*required, "vocab_size"):
            if key not in d:
                raise ModelError(f"config.json of {arch} lacks {key!r}")
        if d.get("hidden_act", "silu") != "silu":
            raise ModelError(f"hidden_act={d['hidden_act']!r} is not supported; only 'silu' is")
        if d.get("use_sliding_window"):
            raise ModelError(f"{arch} with use_sliding_window=true is not supported")
        heads = d["num_attention_heads"]
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        attention_bias = bool(d.get("attention_bias", False))
        return cls(
            architecture=arch,
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            intermediate_size=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(rope),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=arch in _ALWAYS_QKV_BIAS or attention_bias,
            o_proj_bias=arch not in _ALWAYS_QKV_BIAS and attention_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            dtype=_dtype_name(d.get("torch_dtype") or d.get("dtype") or "float32"),
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=_int_tuple(d.get("eos_token_id")),
            sliding_window=d.get("sliding_window"),
            source_quantization=d.get("rt_source_quantization"),
        )


def _rope_scaling(rope: dict[str, Any]) -> RopeScaling | None:
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ModelError(f"rope_type={kind!r} is not supported; supported: 'default', 'llama3'")
    return RopeScaling(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
    )


def _dtype_name(value: str) -> str:
    name = str(value).removeprefix("torch.")
    if name not in _DTYPES:
        raise ModelError(
            f"checkpoint dtype {value!r} is not supported; use float32/bfloat16/float16"
        )
    return _DTYPES[name]


def _int_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(value)
