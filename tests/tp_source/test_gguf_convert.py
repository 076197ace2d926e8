"""The default model's one-time GGUF conversion, checked against transformers' own GGUF loader."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rt.core.build_once import MARKER, build_once, is_complete
from rt.core.errors import ModelError
from rt.plugins.tp import cache_fallback, gguf_convert
from rt.plugins.tp.cache_fallback import build_with_fallback
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
        from rt.core.build_once import build_once

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


def test_a_file_that_changed_size_after_the_build_makes_the_folder_incomplete(
    tmp_path: Path,
) -> None:
    final = build_once(tmp_path / "m", _write_files)
    assert is_complete(final)
    marker = json.loads((final / MARKER).read_text())
    assert marker["sizes"] == {"a.txt": 1, "b.txt": 1}
    (final / "a.txt").write_text("")  # truncated later: a copied cache, a disk error
    assert not is_complete(final)
    assert build_once(final, _write_files) == final  # rebuilt, not trusted
    assert is_complete(final) and (final / "a.txt").read_text() == "a"

    # a marker from before sizes were recorded lists only the names: still trusted
    (final / MARKER).write_text(json.dumps({"files": ["a.txt", "b.txt"]}))
    assert is_complete(final)
    (final / MARKER).write_text("{half")
    assert not is_complete(final)


def _not_writable(out: Path) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(out))


def test_a_cache_that_cannot_take_the_folder_falls_back_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, spare = tmp_path / "cache" / "models" / "m", tmp_path / "tmp"
    built: list[Path] = []

    def build(out: Path) -> None:
        if tmp_path / "cache" in out.parents:  # writing into the cache fails
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
        built.append(out)
        _write_files(out)

    folder = build_with_fallback(cache, build, "the test model", fallback=spare)
    assert folder == spare / "models" / "m" and is_complete(folder) and len(built) == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(
        f"rt: warning: cannot write the test model to {cache.parent} (No space left on device); "
        f"using {folder.parent} instead"
    )
    assert not list(cache.parent.glob(".m.tmp-*")), "the half-built folder was removed"

    # Reused, with no build attempt, while the cache still cannot take it.
    caplog.clear()
    monkeypatch.setattr(cache_fallback, "_has_room", lambda folder, need: False)
    assert build_with_fallback(cache, _not_writable, "the test model", fallback=spare) == folder
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "(not writable, or too little room); using" in warning

    # Once the cache can take it again, it is built there.
    monkeypatch.undo()
    assert build_with_fallback(cache, _write_files, "the test model", fallback=spare) == cache
    assert is_complete(cache)


def test_when_neither_folder_can_take_it_the_error_names_both(tmp_path: Path) -> None:
    cache, spare = tmp_path / "cache" / "models" / "m", tmp_path / "tmp"
    with pytest.raises(ModelError) as e:
        build_with_fallback(cache, _not_writable, "the test model", fallback=spare)
    assert str(e.value) == (
        f"cannot write the test model to {cache.parent} (Read-only file system) nor to "
        f"{spare / 'models'} (Read-only file system); set RT_CACHE_DIR to a writable folder "
        "with room for it"
    )
