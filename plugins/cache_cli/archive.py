"""The one portable file of ``rt cache export`` / ``rt cache import``: an uncompressed tar::

    rt-cache.json                                format, rt version, created, entries, prepared
    compile/<model>-<digest>/manifest.json
    compile/<model>-<digest>/artifacts.bin       torch's portable artefacts, when written
    compile/<model>-<digest>/inductor/...        Inductor's cache (compiled kernels included)
    compile/<model>-<digest>/triton/...
    prepared/<model>-<key>/rank<r>-of-<tp>/...   complete prepared weights, marker included

Reading trusts nothing in the file: every member name is checked (relative, no ``..``,
regular files and folders only, inside a unit the index lists) and every manifest is
compared with its index entry before a byte is written. Each unit is then extracted to a
temporary sibling of its destination and renamed into place only once all are staged.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
from rt import __version__
from rt.core.build_once import is_complete
from rt.core.compile_cache import ARTIFACTS, MANIFEST, CompileKey
from rt.core.errors import RtError

FORMAT = 1
INDEX = "rt-cache.json"


class ArchiveRefused(RtError):
    """Not an rt cache archive, or built for another machine: nothing was written."""

    exit_code = 2


@attrs.frozen
class Prepared:
    """One rank's prepared weights: ``rel`` is ``<model>-<key>/rank<r>-of-<tp>``."""

    rel: str
    path: Path
    complete: bool

    @property
    def model(self) -> str:
        return self.rel.split("/")[0].rsplit("-", 1)[0]


def list_prepared(root: Path) -> list[Prepared]:
    """Every prepared-weights folder under ``root`` (locks and temp dirs left out)."""
    found = []
    for model in _subdirs(root):
        for rank in _subdirs(model):
            found.append(Prepared(f"{model.name}/{rank.name}", rank, is_complete(rank)))
    return found


def entry_files(folder: Path) -> list[Path]:
    """What an entry exports: its manifest, artifacts.bin and its inductor/ and triton/
    trees; nothing when it has neither artefacts nor an Inductor cache (it would be of no
    use elsewhere). The trees go too: imported from artifacts.bin alone, the default
    model's compile stage took 56 s, with the trees what a warm cache takes
    (docs/benchmarks.md).
    """
    artifacts = [folder / ARTIFACTS] if (folder / ARTIFACTS).is_file() else []
    trees = [*_files(folder / "inductor"), *_files(folder / "triton")]
    if not artifacts and not trees:
        return []
    return [folder / MANIFEST, *artifacts, *trees]


def write_archive(file: Path, entries: list[tuple[Path, dict]], prepared: list[Prepared]) -> int:
    """Write the archive through ``FILE.tmp-<pid>`` and a rename; returns its size."""
    index = {
        "format": FORMAT,
        "rt": __version__,
        "created": time.time(),
        "entries": [{"dir": folder.name, "manifest": m} for folder, m in entries],
        "prepared": [p.rel for p in prepared],
    }
    tmp = file.with_name(f"{file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                data = json.dumps(index, indent=1, sort_keys=True).encode()
                info = tarfile.TarInfo(INDEX)
                info.size, info.mtime = len(data), int(index["created"])
                tar.addfile(info, io.BytesIO(data))
                for folder, _ in entries:
                    for path in entry_files(folder):
                        rel = path.relative_to(folder).as_posix()
                        tar.add(path, f"compile/{folder.name}/{rel}", filter=_anonymous)
                for p in prepared:
                    for path in _files(p.path):
                        rel = path.relative_to(p.path).as_posix()
                        tar.add(path, f"prepared/{p.rel}/{rel}", filter=_anonymous)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return file.stat().st_size


@attrs.frozen
class Unit:
    """What one destination folder receives: a compile entry (``key`` set) or one
    rank's prepared weights; ``members`` are (tar member, path inside the folder)."""

    name: str
    key: CompileKey | None
    members: list[tuple[tarfile.TarInfo, str]]


def open_archive(file: Path) -> tuple[tarfile.TarFile, dict, list[Unit]]:
    """The open tar, its index and its units, every name and manifest checked."""
    try:
        tar = tarfile.open(file, "r:")
    except FileNotFoundError:
        raise ArchiveRefused(f"cannot import {file}: no such file") from None
    except tarfile.TarError:
        raise ArchiveRefused(f"{file} is not an rt cache archive (not a tar file)") from None
    except OSError as e:
        raise ArchiveRefused(f"cannot import {file}: {e.strerror or e}") from None
    try:
        index, units = _read(tar)
    except ArchiveRefused as e:
        tar.close()
        raise ArchiveRefused(f"{file} is not an rt cache archive: {e}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        tar.close()
        raise ArchiveRefused(f"{file} is not an rt cache archive (unreadable: {e})") from None
    return tar, index, units


def _read(tar: tarfile.TarFile) -> tuple[dict, list[Unit]]:
    members = tar.getmembers()
    found = [m for m in members if m.name == INDEX and m.isfile()]
    if not found:
        raise ArchiveRefused(f"it has no {INDEX}")
    try:
        index = json.loads(tar.extractfile(found[0]).read())
        version = index.get("format")
        if version != FORMAT:
            raise ArchiveRefused(f"format {version!r}; this rt {__version__} reads format {FORMAT}")
        keys = {}
        for e in index["entries"]:
            key = CompileKey(**e["manifest"]["key"])
            if e["dir"] != key.dirname or len(_parts(key.dirname, "entry")) != 1:
                raise ArchiveRefused(f"entry {e['dir']!r} does not match its key ({key.dirname})")
            keys[key.dirname] = key
        units = {f"compile/{d}": Unit(d, k, []) for d, k in keys.items()}
        for rel in index["prepared"]:
            if not (isinstance(rel, str) and len(_parts(rel, "prepared-weights folder")) == 2):
                raise ArchiveRefused(f"bad prepared-weights folder {rel!r}")
            units[f"prepared/{rel}"] = Unit(rel, None, [])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArchiveRefused(f"malformed {INDEX} ({type(e).__name__}: {e})") from None
    for m in members:
        parts = _parts(m.name)
        if not (m.isfile() or m.isdir()):
            raise ArchiveRefused(f"member {m.name!r} is a link or a special file")
        if m.name == INDEX or m.isdir():
            continue
        head = 2 if parts[0] == "compile" else 3
        unit = units.get("/".join(parts[:head]))
        if unit is None or len(parts) <= head:
            raise ArchiveRefused(f"member {m.name!r} belongs to no entry in {INDEX}")
        unit.members.append((m, "/".join(parts[head:])))
    for unit in units.values():
        if unit.key is not None:
            _check_manifest(tar, unit)
    return index, list(units.values())


def _check_manifest(tar: tarfile.TarFile, unit: Unit) -> None:
    manifest = [m for m, rel in unit.members if rel == MANIFEST]
    if not manifest:
        raise ArchiveRefused(f"entry {unit.name} has no {MANIFEST}")
    try:
        key = CompileKey(**json.loads(tar.extractfile(manifest[0]).read())["key"])
    except (ValueError, KeyError, TypeError) as e:
        raise ArchiveRefused(f"entry {unit.name} has a malformed {MANIFEST} ({e})") from None
    if key != unit.key:
        raise ArchiveRefused(f"entry {unit.name}: its {MANIFEST} and {INDEX} disagree")


def _parts(name: str, what: str = "member") -> list[str]:
    """The components of a relative path; refuses absolute names and ``..``, and (for
    index names) a component that starts with a dot, as temporary folders do."""
    parts = name.rstrip("/").split("/")
    bad = ("", ".", "..")
    if name.startswith("/") or "\\" in name or any(p in bad for p in parts):
        raise ArchiveRefused(f"{what} {name!r} is not a plain relative path")
    if what != "member" and any(p.startswith(".") for p in parts):
        raise ArchiveRefused(f"{what} {name!r} starts with a dot")
    return parts


def install(tar: tarfile.TarFile, units: list[Unit], compile_root: Path, prepared: Path) -> None:
    """Stage every unit beside its destination, then rename each into place (an existing
    folder of the same name is replaced). Any failure while staging writes nothing."""
    staged: list[tuple[Path, Path]] = []
    try:
        for unit in units:
            final = (compile_root if unit.key is not None else prepared) / unit.name
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            staged.append((tmp, final))
            for member, rel in unit.members:
                dest = tmp.joinpath(*rel.split("/"))
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.utime(dest, (member.mtime, member.mtime))
            if unit.key is None and not is_complete(tmp):
                raise ArchiveRefused(f"prepared weights {unit.name} are incomplete in the archive")
        for tmp, final in staged:
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            if final.exists():
                os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        for tmp, _ in staged:
            shutil.rmtree(tmp, ignore_errors=True)


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [d for d in sorted(folder.iterdir()) if not d.name.startswith(".") and d.is_dir()]


def _files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder``, sorted; links are left out (never archived)."""
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                yield path
