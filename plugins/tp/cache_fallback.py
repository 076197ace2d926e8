"""Building into rt's cache, or into a temporary folder when the cache cannot take it.

A read-only ``RT_CACHE_DIR`` (an image's baked-in cache, a shared mount) or a full one
must not stop ``rt serve`` with no model: what a user expects is a server, plus a line
that says where the files went instead and what to fix. The fallback is a per-user
folder under the system's temp dir (``$TMPDIR``), so later starts on the same boot
reuse it instead of converting again.

    >>> build_with_fallback(cache / "models" / "m", lambda out: ..., "the default model")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rt.core.build_once import build_once, is_complete
from rt.core.errors import ModelError

log = logging.getLogger("rt.cache")


def fallback_root() -> Path:
    """``$TMPDIR/rt-<uid>``: one user's, so a shared /tmp does not mix users' files."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"rt-{uid}"


def build_with_fallback(
    final: Path, build: Callable[[Path], None], what: str, fallback: Path | None = None
) -> Path:
    """``build_once(final, build)``, or the same folder name under ``fallback`` (default
    :func:`fallback_root`) when writing ``final`` fails with an OSError (read-only, full,
    no permission). Warns once, naming both folders and the fix.

    A finished copy under ``fallback`` is reused, without trying ``final`` again, while
    ``final``'s filesystem still cannot take it (not writable, or less free space than
    the copy's size): a full cache would otherwise cost a failed build on every start.
    """
    if is_complete(final):
        return final
    spare = (fallback or fallback_root()) / final.parent.name / final.name
    if is_complete(spare) and not _has_room(final.parent, _folder_bytes(spare)):
        log.warning(_warning(what, final, spare, "not writable, or too little room"))
        return spare
    try:
        return build_once(final, build)
    except OSError as first:
        log.warning(_warning(what, final, spare, _reason(first)))
        try:
            return build_once(spare, build)
        except OSError as second:
            raise ModelError(
                f"cannot write {what} to {final.parent} ({_reason(first)}) nor to "
                f"{spare.parent} ({_reason(second)}); set RT_CACHE_DIR to a writable folder "
                "with room for it"
            ) from second


def _warning(what: str, final: Path, spare: Path, reason: str) -> str:
    return (
        f"rt: warning: cannot write {what} to {final.parent} ({reason}); using "
        f"{spare.parent} instead, which may not outlive a reboot: make RT_CACHE_DIR writable "
        "with room for it, or point RT_CACHE_DIR at a folder that is"
    )


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _has_room(folder: Path, need: int) -> bool:
    """Whether ``folder`` (or its nearest existing parent) is writable and has ``need``
    bytes free. ``os.access`` reports a read-only filesystem even to root."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK):
        return False
    return shutil.disk_usage(folder).free >= need


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
