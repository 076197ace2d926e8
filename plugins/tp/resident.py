"""What the TP engine loads ahead in a resident process (``rt_resident_preload``).

A zygote (``rt zygote start``) imports the engine's modules for the driver, rank 0 and
every other rank (``preload.py`` names them), and loads the configured model's
tokenizer: parsing ``tokenizer.json`` holds the interpreter lock for ~0.1-0.15 s on the
default model, time the driver's other threads would wait on every start. A command
forked from the zygote takes the loaded tokenizer when the model's tokenizer files
are still the ones it read (name, size, mtime); otherwise it loads them as usual.

Only a model found on disk is preloaded: the default model once converted, a folder,
or a hub id already in the local cache. A resident process never downloads or
converts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rt.core import hookimpl
from rt.core.errors import ModelError
from rt.plugins.tp.model_source import TOKENIZER_FILES

_loaded: dict[Path, tuple[tuple, Any]] = {}  # folder -> (files_key, Tokenizer)


def files_key(folder: Path) -> tuple:
    """The tokenizer files' names, sizes and mtimes (None for a missing one)."""
    key = []
    for name in TOKENIZER_FILES:
        try:
            st = os.stat(folder / name)
            key.append((name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            key.append((name, None, None))
    return tuple(key)


def preload_tokenizer(folder: Path) -> Any:
    """Load and keep ``folder``'s tokenizer, its chat template compiled."""
    from rt.plugins.tp.tokenizer import Tokenizer

    folder = folder.resolve()
    key = files_key(folder)
    tokenizer = Tokenizer.from_dir(folder)
    tokenizer.compile_chat_template()
    _loaded[folder] = (key, tokenizer)
    return tokenizer


def resident_tokenizer(folder: Path) -> Any | None:
    """The tokenizer a resident process loaded for ``folder``, if its files are unchanged."""
    if not _loaded:
        return None
    found = _loaded.get(Path(folder).resolve())
    if found is None or found[0] != files_key(Path(folder).resolve()):
        return None
    return found[1]


def local_model_folder(model: Any) -> tuple[Path | None, str]:
    """The folder of ``model`` (a ``ModelConfig``) if it is on disk as is, and why not."""
    if model.source is None:
        from rt.core.build_once import is_complete
        from rt.plugins.tp.gguf_convert import default_model_folder

        try:
            folder = default_model_folder()
        except ModelError as e:
            return None, str(e)
        if not is_complete(folder):
            return None, "the default model is not converted yet (the first rt serve does it)"
        return folder, "the default model"
    local = Path(model.source).expanduser()
    if local.is_dir():
        return local, str(local)
    from rt.plugins.tp.model_source import resolve_model

    try:  # the local hub cache only
        return resolve_model(model.source, model.revision, model.download_dir).path, model.source
    except ModelError as e:
        return None, str(e)


@hookimpl
def rt_resident_preload(config: Any) -> dict[str, str]:
    folder, what = local_model_folder(config.model)
    if folder is None:
        return {"tokenizer": f"not preloaded: {what}"}
    try:
        preload_tokenizer(folder)
    except ModelError as e:
        return {"tokenizer": f"not preloaded: {e}"}
    return {"tokenizer": f"{what} ({folder})"}
