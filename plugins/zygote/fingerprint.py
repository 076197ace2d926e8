"""Is a zygote current? What it imported, against what is on disk now.

Besides the caller's installation (``installation.py``), a zygote checks that what it
imported has not changed on disk since it did: rt's source files (size and mtime first, a
SHA-256 of the contents when those moved), torch's installed version and each plugin
distribution's. Any difference is a reason, in words, and the request is refused.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from rt.core.entry_points import distribution_version


@attrs.frozen
class SourceFile:
    path: str
    size: int
    mtime_ns: int
    sha256: str


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def source_files(modules: Mapping[str, Any]) -> list[SourceFile]:
    """rt's own source files among ``modules`` (``sys.modules``), with their digests."""
    paths = set()
    for name, module in list(modules.items()):
        if name == "rt" or name.startswith("rt."):
            path = getattr(module, "__file__", None)
            if path and os.path.isfile(path):
                paths.add(os.path.abspath(path))
    files = []
    for path in sorted(paths):
        st = os.stat(path)
        files.append(SourceFile(path, st.st_size, st.st_mtime_ns, _digest(path)))
    return files


def changed_sources(files: Iterable[SourceFile]) -> list[str]:
    """The files whose contents differ from when they were imported (or are gone)."""
    changed = []
    for f in files:
        try:
            st = os.stat(f.path)
            if (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns):
                continue
            if st.st_size == f.size and _digest(f.path) == f.sha256:
                continue  # touched, not changed
        except OSError:
            pass
        changed.append(f.path)
    return changed


def path_mtimes() -> dict[str, int]:
    """The modification time of each folder on ``sys.path``: installing or removing a
    distribution adds or removes a ``.dist-info`` folder there, which moves it."""
    found = {}
    for entry in sys.path:
        try:
            found[entry] = os.stat(entry or ".").st_mtime_ns
        except OSError:
            found[entry] = -1
    return found


def drift(
    sources: Iterable[SourceFile],
    versions: Mapping[str, str | None],
    root: str,
    mtimes: Mapping[str, int],
) -> str | None:
    """Why what a zygote imported is no longer what is installed, or None.

    ``versions``: distribution name -> the version imported (torch's and each selected
    plugin's distribution), read again only when a folder of ``mtimes`` (``path_mtimes``
    when they were read) moved; ``root``: rt's folder, to name changed files relative to
    it. Costs ~100 ``stat`` calls: it runs on every request."""
    changed = changed_sources(sources)
    if changed:
        first = os.path.relpath(changed[0], os.path.dirname(root))
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        return f"rt's source changed since the zygote imported it: {first}{more}"
    if path_mtimes() == dict(mtimes):
        return None
    for dist, imported in versions.items():
        now = distribution_version(dist)
        if now != imported:
            return f"{dist} {imported} was imported; {now or 'none'} is installed now"
    return None
