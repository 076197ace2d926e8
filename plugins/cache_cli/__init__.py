"""Built-in plugin ``cache``: ``rt cache ls | export | import | clear``.

The compile cache (``rt.core.compile_cache``: one entry per key under
``compile.cache_dir``, else ``$RT_CACHE_DIR/compile``) and the prepared weights
(``$RT_CACHE_DIR/prepared/<model>-<key>/rank<r>-of-<tp>/``) are listed, moved between
machines as one file (``archive.py``) and removed. Importing checks each compile entry
against this machine's torch, triton and device first. Nothing here imports torch, except
``import`` when an entry names a device that is not this machine's CPU (is it a GPU here?).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from rt.core import hookimpl
from rt.core.cli_context import CliContext, print_json, print_table
from rt.core.compile_cache import (
    CompileKey,
    compile_root,
    device_name,
    folder_bytes,
    installed_versions,
    list_entries,
)
from rt.core.errors import RtError
from rt.core.paths import rt_cache_dir
from rt.plugins.cache_cli import archive


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    from rt.core.cli import add_config_options

    p = subparsers.add_parser(
        "cache", help="list, export, import or clear compiled artefacts and prepared weights"
    )
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    ls = sub.add_parser("ls", help="list compile entries and prepared weights")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=ls_command)
    export = sub.add_parser("export", help="write the cache to one file for another machine")
    export.add_argument("file", type=Path, metavar="FILE")
    export.add_argument(
        "--model",
        metavar="NAME",
        help="only this model's entries and prepared weights (its folder name)",
    )
    export.set_defaults(handler=export_command)
    imp = sub.add_parser("import", help="add the entries of an exported file to this cache")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument(
        "--force", action="store_true", help="import entries built for another machine too"
    )
    imp.set_defaults(handler=import_command)
    clear = sub.add_parser("clear", help="remove every compile entry and the prepared weights")
    clear.add_argument("--yes", action="store_true", help="do not ask")
    clear.add_argument("--compile-only", action="store_true", help="keep the prepared weights")
    clear.set_defaults(handler=clear_command)
    for action in sub.choices.values():
        action.add_argument(
            "--cache-dir",
            metavar="DIR",
            help="the compile cache root (default: compile.cache_dir, else $RT_CACHE_DIR/compile)",
        )
        add_config_options(action)
    p.set_defaults(handler=lambda args, cli: p.print_help() or 2)


def _roots(args: argparse.Namespace, cli: CliContext) -> tuple[Path, Path]:
    """The compile root (``--cache-dir``, else the config's) and the prepared root."""
    cache_dir = args.cache_dir or cli.config(args).compile.cache_dir
    return compile_root(cache_dir), rt_cache_dir() / "prepared"


def ls_command(args: argparse.Namespace, cli: CliContext) -> int:
    root, prepared_root = _roots(args, cli)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for folder, manifest in list_entries(root):
        written = manifest.get("written", 0)
        rows.append(
            {
                "kind": "compile",
                "path": str(folder),
                **manifest["key"],
                "digest": manifest.get("digest"),
                "bytes": folder_bytes(folder),
                "written": written,
                "age_s": round(now - written, 1),
                "compile_s": manifest.get("compile_s"),
            }
        )
    for p in archive.list_prepared(prepared_root):
        rows.append(
            {
                "kind": "prepared",
                "path": str(p.path),
                "name": p.rel,
                "model": p.model,
                "complete": p.complete,
                "bytes": folder_bytes(p.path),
            }
        )
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"the cache is empty: no compile entries in {root}, no prepared weights")
        return 0
    entries = [r for r in rows if r["kind"] == "compile"]
    total = human_bytes(sum(r["bytes"] for r in entries))
    print(f"compile cache {root}: {count(len(entries), 'entry', 'entries')}, {total}")
    if entries:
        header = ("model", "digest", "rank/tp", "dtype", "quant", "device", "torch", "size", "age")
        table = [
            (r["model"], r["digest"], f"{r['rank']}/{r['tp']}", r["dtype"], r["quantization"])
            + (r["device"], r["torch"], human_bytes(r["bytes"]), human_age(r["age_s"]))
            for r in entries
        ]
        print_table(header, table)
    prepared = [r for r in rows if r["kind"] == "prepared"]
    total = human_bytes(sum(r["bytes"] for r in prepared))
    print(f"\nprepared weights {prepared_root}: {count(len(prepared), 'folder')}, {total}")
    if prepared:
        table = [
            (r["name"], human_bytes(r["bytes"]), "complete" if r["complete"] else "incomplete")
            for r in prepared
        ]
        print_table(("folder", "size", "state"), table)
    return 0


def export_command(args: argparse.Namespace, cli: CliContext) -> int:
    root, prepared_root = _roots(args, cli)
    entries, skipped = [], []
    for folder, manifest in list_entries(root):
        if args.model and manifest["key"]["model"] != args.model:
            continue
        (entries if archive.entry_files(folder) else skipped).append((folder, manifest))
    prepared = [
        p
        for p in archive.list_prepared(prepared_root)
        if p.complete and (not args.model or p.model == args.model)
    ]
    for folder, _ in skipped:
        print(f"skipped {folder.name}: it has neither artifacts.bin nor inductor/", file=sys.stderr)
    if not entries and not prepared:
        which = f" of model {args.model!r}" if args.model else ""
        raise RtError(
            f"nothing to export: no compile entries{which} in {root} and no complete "
            f"prepared weights{which} in {prepared_root}"
        )
    try:
        size = archive.write_archive(args.file, entries, prepared)
    except OSError as e:
        raise RtError(f"cannot write {args.file}: {e}") from None
    for folder, _ in entries:
        print(f"compile   {folder.name}  {human_bytes(folder_bytes(folder))}")
    for p in prepared:
        print(f"prepared  {p.rel}  {human_bytes(folder_bytes(p.path))}")
    print(
        f"exported {count(len(entries), 'compile entry', 'compile entries')} and "
        f"{count(len(prepared), 'prepared-weights folder')} "
        f"to {args.file} ({human_bytes(size)})"
    )
    return 0


def import_command(args: argparse.Namespace, cli: CliContext) -> int:
    root, prepared_root = _roots(args, cli)
    tar, index, units = archive.open_archive(args.file)
    with tar:
        here = Machine()
        problems = [
            f"{u.name}: {'; '.join(found)}"
            for u in units
            if u.key is not None and (found := here.mismatches(u.key))
        ]
        if problems and not args.force:
            lines = "\n  ".join(problems)
            raise archive.ArchiveRefused(
                f"{args.file} holds compile entries built for another machine; nothing was "
                f"imported (--force imports them anyway):\n  {lines}"
            )
        for line in problems:
            print(f"rt: warning: importing anyway (--force): {line}", file=sys.stderr)
        try:
            archive.install(tar, units, root, prepared_root)
        except archive.ArchiveRefused as e:
            raise archive.ArchiveRefused(f"{args.file}: {e}; nothing was imported") from None
        except OSError as e:
            if e.errno in _CANNOT_WRITE:
                dest = _destination(e, root, prepared_root, units)
                raise RtError(
                    f"cannot import {args.file}: cannot write to {dest}: {e.strerror}; free "
                    f"space there, or import into another folder (RT_CACHE_DIR, or --cache-dir "
                    f"for the compile entries); nothing was imported"
                ) from None
            raise RtError(f"cannot import {args.file}: {e}") from None
        except (tarfile.TarError, EOFError) as e:
            raise RtError(f"cannot import {args.file}: {e}") from None
    for u in units:
        where = root if u.key is not None else prepared_root
        kind = "compile " if u.key is not None else "prepared"
        print(f"{kind}  {u.name}  {human_bytes(folder_bytes(where / u.name))}")
    entries = sum(u.key is not None for u in units)
    print(
        f"imported {count(entries, 'compile entry', 'compile entries')} into {root} and "
        f"{count(len(units) - entries, 'prepared-weights folder')} into {prepared_root} "
        f"(from {args.file}, written by rt {index.get('rt')})"
    )
    return 0


# What a full, read-only or foreign destination raises (archive.install writes there).
_CANNOT_WRITE = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)


def _destination(error: OSError, root: Path, prepared_root: Path, units: list[archive.Unit]) -> str:
    """The folder an import failed to write to: the one holding ``error``'s file, else
    the one the archive writes to (a failed write names no file)."""
    if error.filename is not None:
        failed = Path(os.fsdecode(error.filename))
        for folder in (root, prepared_root):
            if failed.is_relative_to(folder):
                return str(folder)
        return str(failed)
    kinds = {u.key is not None for u in units}
    return " and ".join(str(root if c else prepared_root) for c in sorted(kinds, reverse=True))


class Machine:
    """This machine's side of the import check; torch is imported only to ask whether an
    entry's device is one of the GPUs here."""

    def __init__(self) -> None:
        versions = installed_versions()
        self.torch, self.triton = versions["torch"], versions["triton"]
        self.cpu = device_name("cpu")
        self._gpus: list[str] | None = None

    def gpus(self) -> list[str]:
        if self._gpus is None:
            self._gpus = []
            if self.torch != "none" and "+cpu" not in self.torch:  # a CPU build has no GPU
                import torch

                if torch.cuda.is_available():
                    self._gpus = [device_name("cuda", i) for i in range(torch.cuda.device_count())]
        return self._gpus

    def mismatches(self, key: CompileKey) -> list[str]:
        found = []
        if key.torch != self.torch:
            found.append(f"torch is {key.torch!r} in the archive, {self.torch!r} here")
        if key.device == self.cpu:
            return found
        if key.device in self.gpus():
            if key.triton != self.triton:
                found.append(f"triton is {key.triton!r} in the archive, {self.triton!r} here")
            return found
        gpus = ", ".join(repr(g) for g in self.gpus()) or "no GPU"
        found.append(f"device is {key.device!r} in the archive, CPU {self.cpu!r} and {gpus} here")
        return found


def clear_command(args: argparse.Namespace, cli: CliContext) -> int:
    root, prepared_root = _roots(args, cli)
    entries = [folder for folder, _ in list_entries(root)]
    # the temp dirs of a killed import (archive.install) go too
    stale = [d for d in root.glob(".*.tmp-*") if d.is_dir()] if root.is_dir() else []
    folders = entries + stale
    compile_bytes = sum(folder_bytes(f) for f in folders)
    prepared = [] if args.compile_only or not prepared_root.is_dir() else [prepared_root]
    prepared_bytes = sum(folder_bytes(p) for p in prepared)
    if not folders and not prepared_bytes:
        print(f"nothing to remove: no compile entries in {root}, no prepared weights")
        return 0
    what = f"{count(len(entries), 'compile entry', 'compile entries')} ({human_bytes(compile_bytes)}) in {root}"
    if prepared:
        what += f" and the prepared weights ({human_bytes(prepared_bytes)}) in {prepared_root}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise RtError(f"rt cache clear would remove {what}: pass --yes to do so")
        if input(f"remove {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1
    for folder in folders + prepared:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"removed {what}; freed {human_bytes(compile_bytes + prepared_bytes)}")
    return 0


def count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
