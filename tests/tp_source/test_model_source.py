"""Model resolution: default model, local folders, and a fake Hugging Face cache (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rt.core.errors import ModelError
from rt.plugins.tp.model_source import ResolvedModel, resolve_model, rt_cache_dir

SHA = "0123456789abcdef0123456789abcdef01234567"
OLD_SHA = "fedcba9876543210fedcba9876543210fedcba98"


def _model_folder(folder: Path, shards: int = 0, extra: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    if shards:
        names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
        weight_map = {f"w{i}": names[i % shards] for i in range(2 * shards)}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        for name in names:
            (folder / name).write_bytes(b"")
    else:
        (folder / "model.safetensors").write_bytes(b"")
    for name in ("tokenizer.json", "tokenizer_config.json", *extra):
        (folder / name).write_text("{}")
    return folder


def _fake_hub_cache(root: Path, repo: str, revisions: dict[str, str]) -> Path:
    """models--org--name/{blobs,refs,snapshots} as huggingface_hub lays it out."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    for ref, sha in revisions.items():
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(sha)
        snapshot = repo_dir / "snapshots" / sha
        staged = _model_folder(root / f"staging-{sha}", extra=("generation_config.json",))
        (repo_dir / "blobs").mkdir(exist_ok=True)
        snapshot.mkdir(parents=True)
        for f in sorted(staged.iterdir()):  # snapshot files are symlinks into blobs/
            blob = repo_dir / "blobs" / f"{sha[:8]}-{f.name}"
            f.rename(blob)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        staged.rmdir()
    return root


def test_local_folder(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "my-model", extra=("chat_template.jinja",))
    m = resolve_model(str(folder), revision="ignored-for-folders", download_dir=None)
    assert isinstance(m, ResolvedModel)
    assert (m.path, m.name) == (folder, "my-model")
    assert [f.name for f in m.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ]
    assert all(f.is_absolute() and f.is_file() for f in m.files)
    assert m.weight_files == (folder / "model.safetensors",)


def test_sharded_folder_lists_index_and_shards(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "sharded", shards=3)
    (folder / "stray.safetensors").write_bytes(b"")  # not in the index: not opened
    names = [f.name for f in resolve_model(str(folder), None, None).files]
    assert names[:5] == [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    assert "stray.safetensors" not in names

    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelError, match=r"missing weight shards \['model-00002-of-00003"):
        resolve_model(str(folder), None, None)


def test_unusable_folders_say_why(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "bin-only")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=f"{folder} has no \\*.safetensors"):
        resolve_model(str(folder), None, None)
    (folder / "config.json").unlink()
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(folder), None, None)
    with pytest.raises(ModelError, match="looks like a path but no such folder"):
        resolve_model(str(tmp_path / "missing"), None, None)


def test_hub_id_from_local_cache(tmp_path: Path) -> None:
    cache = _fake_hub_cache(tmp_path / "hub", "org/tiny", {"main": SHA, "v1": OLD_SHA})
    snapshots = cache / "models--org--tiny" / "snapshots"
    m = resolve_model("org/tiny", None, str(cache))
    assert (m.path, m.name) == (snapshots / SHA, "org/tiny")
    assert [f.name for f in m.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ]
    assert all(f.is_symlink() and f.resolve().parent.name == "blobs" for f in m.files)
    assert resolve_model("org/tiny", "v1", str(cache)).path == snapshots / OLD_SHA
    assert resolve_model("org/tiny", OLD_SHA, str(cache)).path == snapshots / OLD_SHA


def test_hub_id_not_cached_says_how_to_fix(tmp_path: Path) -> None:
    cache = _fake_hub_cache(tmp_path / "hub", "org/tiny", {"main": SHA})
    with pytest.raises(ModelError) as info:
        resolve_model("org/other", None, str(cache))
    message = str(info.value)
    assert "'org/other'" in message and str(cache) in message
    assert "hf download org/other" in message and "pass a model folder" in message
    with pytest.raises(ModelError, match="revision 'v9'.*--revision v9"):
        resolve_model("org/tiny", "v9", str(cache))
    with pytest.raises(ModelError, match="neither a folder nor a valid hub id"):
        resolve_model("not a valid id!", None, str(cache))


def test_default_model(default_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_CACHE_DIR", str(default_model_dir.parent.parent))
    m = resolve_model(None, None, None)
    assert (m.path, m.name) == (default_model_dir, "SmolLM2-135M-Instruct")
    assert [f.name for f in m.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ]


def test_rt_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path / "rt-here"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert rt_cache_dir() == tmp_path / "rt-here"
    monkeypatch.delenv("RT_CACHE_DIR")
    assert rt_cache_dir() == tmp_path / "xdg" / "rt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rt_cache_dir() == tmp_path / "home" / ".cache" / "rt"


def test_imports_stay_lazy(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "m")
    code = (
        "import sys\n"
        "from rt.plugins.tp import model_source, gguf_convert, tokenizer, detokenizer\n"
        f"model_source.resolve_model({str(folder)!r}, None, None)\n"
        "heavy = ('huggingface_hub', 'transformers', 'torch', 'gguf', 'tokenizers', 'jinja2')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _FakeHub:
    """``huggingface_hub.snapshot_download`` without a network: ``local_files_only``
    lookups miss until a download has run; a download fills ``folder`` or raises
    ``error``. ``calls`` records each call's ``local_files_only``."""

    def __init__(self, folder: Path, error: BaseException | None = None):
        self.folder = folder
        self.error = error
        self.calls: list[bool] = []

    def __call__(self, repo_id: str, **kwargs: object) -> str:
        from huggingface_hub import errors

        self.calls.append(bool(kwargs["local_files_only"]))
        if kwargs["local_files_only"] and not self.folder.exists():
            raise errors.LocalEntryNotFoundError(f"{repo_id} is not cached")
        if not kwargs["local_files_only"]:
            if self.error is not None:
                raise self.error
            _model_folder(self.folder)
        return str(self.folder)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _FakeHub:
    import huggingface_hub

    hub = _FakeHub(tmp_path / "downloaded")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return hub


def test_hub_id_not_cached_is_downloaded(fake_hub: _FakeHub) -> None:
    m = resolve_model("org/new", None, None, allow_download=True)
    assert (m.path, m.name) == (fake_hub.folder, "org/new")
    # The cache, the cache again under the download lock, then the download.
    assert fake_hub.calls == [True, True, False]
    fake_hub.calls.clear()
    resolve_model("org/new", None, None, allow_download=True)
    assert fake_hub.calls == [True], "a cached model never touches the network"


def test_config_downloads_unless_offline() -> None:
    from rt.core.config import ModelConfig

    assert ModelConfig().allow_download
    assert not ModelConfig(offline=True).allow_download


@pytest.mark.parametrize(
    ("allow_download", "hf_hub_offline", "fix"),
    [
        (True, "1", "unset HF_HUB_OFFLINE"),
        (False, None, "run without --offline"),
        (False, "true", "unset HF_HUB_OFFLINE and run without --offline"),
    ],
)
def test_downloads_off_say_how_to_allow_them(
    fake_hub: _FakeHub,
    monkeypatch: pytest.MonkeyPatch,
    allow_download: bool,
    hf_hub_offline: str | None,
    fix: str,
) -> None:
    if hf_hub_offline is not None:
        monkeypatch.setenv("HF_HUB_OFFLINE", hf_hub_offline)
    with pytest.raises(ModelError) as info:
        resolve_model("org/new", None, None, allow_download=allow_download)
    message = str(info.value)
    assert "'org/new'" in message and "not in the local Hugging Face cache" in message
    assert f"downloads are off; to download it, {fix}" in message
    assert "pass a model folder" in message
    assert fake_hub.calls == [True], "never asks the network"


def test_failed_download_says_check_the_network(fake_hub: _FakeHub) -> None:
    from huggingface_hub import errors

    try:  # how the hub reports no network: the connection error as the cause
        raise errors.LocalEntryNotFoundError("Got: ConnectError\nAn error...") from OSError(
            "[Errno -2] Name or service not known"
        )
    except errors.LocalEntryNotFoundError as e:
        fake_hub.error = e
    with pytest.raises(ModelError) as info:
        resolve_model("org/new", "v2", None, allow_download=True)
    message = str(info.value)
    assert "'org/new' at revision 'v2'" in message and "\n" not in message
    assert "downloading it failed (OSError: [Errno -2] Name or service not known)" in message
    assert "check the network" in message and "hf download org/new --revision v2" in message


def test_repository_not_on_the_hub(fake_hub: _FakeHub) -> None:
    from huggingface_hub import errors

    class NotFound(errors.RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error")

    fake_hub.error = NotFound()
    with pytest.raises(ModelError, match="'org/typo' was not found on the Hugging Face hub"):
        resolve_model("org/typo", None, None, allow_download=True)
