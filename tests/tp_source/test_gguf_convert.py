"""The default model's one-time GGUF conversion, checked against transformers' own GGUF loader."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rt.plugins.tp import gguf_convert
from rt.plugins.tp.build_once import MARKER, build_once
from rt.plugins.tp.gguf_convert import ensure_default_model
from rt.plugins.tp.tokenizer import Tokenizer

TEXTS = [
    "The capital of France is",
    "  Hello,   world!\n\n\tTabs and 1234567 digits, 3.14.",
    "Unicode: café naïve Привет мир こんにちは世界 🤖🚀 ∑∫",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>x<file_sep>",
]


@pytest.fixture(scope="module")
def gguf_path(default_model_dir: Path) -> Path:
    return gguf_convert.default_gguf_path()


@pytest.mark.slow
def test_weights_equal_transformers_gguf_loader(default_model_dir: Path, gguf_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # from_pretrained(gguf_file=...) needs accelerate; this is the loader it calls.
    config = transformers.AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    ref = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=skeleton)[
        "tensors"
    ]
    ours = load_file(default_model_dir / "model.safetensors")
    assert config.tie_word_embeddings and "lm_head.weight" not in ours
    assert set(ours) == set(ref) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == ref[name].shape, name
        torch.testing.assert_close(tensor, ref[name].float(), rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_tokenizer_matches_transformers_gguf_tokenizer(
    default_model_dir: Path, gguf_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ours = Tokenizer.from_dir(default_model_dir)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids, skip_special_tokens=False) == text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    # SmolLM2 splits every digit on its own (llama.cpp's "smollm" pre-tokenizer).
    assert [ours.decode([i]) for i in ours.encode("2024")] == ["2", "0", "2", "4"]
    messages = [{"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(messages) == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.slow
def test_transformers_generates_paris_from_converted_folder(default_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(default_model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(default_model_dir)
    assert model.dtype == torch.float32
    inputs = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 16
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :])


def test_converted_folder_layout(default_model_dir: Path, gguf_path: Path) -> None:
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        576,
        30,
        49152,
    )
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "float32"
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == pytest.approx(1e-5)
    # every decoder matrix of the GGUF is Q4_1: --quantization auto serves it in int4
    assert config["rt_source_quantization"] == "Q4_1"
    assert (
        json.loads((default_model_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    )
    tok_config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"].startswith("{% for message in messages %}")
    assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert default_model_dir.name.startswith("SmolLM2-135M-Instruct-")

    # A later start reuses the folder as it is.
    marker = default_model_dir / MARKER
    before = marker.stat().st_mtime_ns
    assert ensure_default_model(cache_dir=default_model_dir.parent.parent) == default_model_dir
    assert marker.stat().st_mtime_ns == before


def _write_files(out: Path) -> None:
    (out / "a.txt").write_text("a")
    (out / "b.txt").write_text("b")


def test_build_once_failure_leaves_nothing_trusted(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m-1"

    def killed(out: Path) -> None:
        (out / "a.txt").write_text("half")
        raise KeyboardInterrupt  # as if the process were interrupted mid-conversion

    with pytest.raises(KeyboardInterrupt):
        build_once(final, killed)
    assert not final.exists()
    assert [p.name for p in final.parent.iterdir()] == [".m-1.lock"]

    # A SIGKILL leaves a temp dir behind, and a folder without a marker is not ours.
    stale = final.parent / ".m-1.tmp-999999-deadbeef"
    stale.mkdir()
    (stale / "a.txt").write_text("half")
    final.mkdir()
    (final / "a.txt").write_text("half")
    assert build_once(final, _write_files) == final
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "a.txt", "b.txt"]
    assert (final / "a.txt").read_text() == "a"
    assert not stale.exists()
    assert json.loads((final / MARKER).read_text())["files"] == ["a.txt", "b.txt"]

    assert build_once(final, killed) == final  # complete: the builder is not called again


def test_build_once_concurrent_processes_build_once(tmp_path: Path) -> None:
    final, log = tmp_path / "models" / "m", tmp_path / "builds.log"
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from rt.plugins.tp.build_once import build_once

        def build(out):
            with open({str(log)!r}, "a") as f:
                f.write("built\\n")
            time.sleep(0.3)
            (out / "w.bin").write_bytes(b"x" * 1000)

        print(build_once(Path({str(final)!r}), build))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outputs == [str(final)] * 3
    assert log.read_text() == "built\n"
    assert (final / "w.bin").read_bytes() == b"x" * 1000
