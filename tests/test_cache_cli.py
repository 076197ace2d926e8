"""``rt cache ls | export | import | clear`` through the real CLI, on synthetic entries."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import attrs
import pytest
from rt.core.build_once import build_once
from rt.core.cli import main
from rt.core.compile_cache import (
    ARTIFACTS,
    MANIFEST,
    CompileKey,
    device_name,
    entry_dir,
    folder_bytes,
    installed_versions,
    write_atomic,
    write_manifest,
)
from rt.plugins.cache_cli import human_bytes

from tests.faulty_cache import faulty_cache

PREPARED = "tiny-0123456789abcdef/rank0-of-1"


def rt_process(cache: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m rt ARGS`` with ``cache`` as RT_CACHE_DIR and stdin not a TTY."""
    return subprocess.run(
        [sys.executable, "-m", "rt", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "RT_CACHE_DIR": str(cache)},
        timeout=60,
    )


@pytest.fixture
def rt(monkeypatch, capsys):
    """``rt ARGS`` in this process (the same CLI, without a Python start per call)."""

    def run(cache: Path, *args: str) -> subprocess.CompletedProcess:
        monkeypatch.setenv("RT_CACHE_DIR", str(cache))
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a TTY
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def make_entry(cache: Path, model: str = "tiny", inductor_only: bool = False, **key) -> Path:
    versions = installed_versions()
    here = CompileKey(
        model=model,
        model_files="0" * 16,
        code="1",
        dtype="float32",
        quantization="none",
        tp=1,
        rank=0,
        torch=versions["torch"],
        triton=versions["triton"],
        device=device_name("cpu"),
    )
    folder = entry_dir(cache / "compile", attrs.evolve(here, **key))
    write_manifest(folder, attrs.evolve(here, **key), compile_s=1.5, shapes=[1, 2, 4])
    (folder / "inductor" / "fxgraph").mkdir(parents=True)
    (folder / "inductor" / "fxgraph" / "graph.py").write_text("# an inductor cache file\n")
    if not inductor_only:
        write_atomic(folder / ARTIFACTS, os.urandom(3000))
    return folder


def make_prepared(cache: Path, rel: str = PREPARED) -> Path:
    weights = os.urandom(5000)
    return build_once(
        cache / "prepared" / rel, lambda tmp: (tmp / "weights.safetensors").write_bytes(weights)
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def exported(folder: Path) -> dict[str, bytes]:
    """What export carries of an entry: all of it (manifest, artifacts.bin, inductor/)."""
    return snapshot(folder)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_ls_on_an_empty_cache(rt, cache):
    r = rt(cache, "cache", "ls")
    assert r.returncode == 0, r.stderr
    assert "empty" in r.stdout
    r = rt(cache, "cache", "ls", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


def test_ls_lists_entries_and_prepared_weights(rt, cache):
    folder = make_entry(cache, dtype="bfloat16")
    make_prepared(cache)
    r = rt(cache, "cache", "ls")
    assert r.returncode == 0, r.stderr
    digest = folder.name.rsplit("-", 1)[1]
    entry_line = next(line for line in r.stdout.splitlines() if digest in line)
    for field in ("tiny", "0/1", "bfloat16", "none", device_name("cpu"), "KiB"):
        assert field in entry_line
    assert any(PREPARED in line and "complete" in line for line in r.stdout.splitlines())

    rows = json.loads(rt(cache, "cache", "ls", "--json").stdout)
    assert [r["kind"] for r in rows] == ["compile", "prepared"]
    assert rows[0]["digest"] == digest and rows[0]["dtype"] == "bfloat16"
    assert rows[0]["bytes"] > 3000 and rows[0]["compile_s"] == 1.5
    assert rows[1]["name"] == PREPARED and rows[1]["complete"] and rows[1]["bytes"] > 5000


def test_export_clear_import_round_trip(cache, tmp_path):
    """Through ``python -m rt``: the entry point, the exit codes and the files on disk."""
    folder = make_entry(cache)
    inductor_only = make_entry(cache, model="other", inductor_only=True)
    prepared = make_prepared(cache)
    before = {p: exported(p) for p in (folder, inductor_only, prepared)}
    out = tmp_path / "cache.tar"

    r = rt_process(cache, "cache", "export", str(out))
    assert r.returncode == 0, r.stderr
    assert "exported 2 compile entries and 1 prepared-weights folder " in r.stdout
    assert list(tmp_path.glob("cache.tar.tmp-*")) == []
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert f"compile/{folder.name}/inductor/fxgraph/graph.py" in names  # kernels too
    assert f"compile/{inductor_only.name}/inductor/fxgraph/graph.py" in names

    assert rt_process(cache, "cache", "clear", "--yes").returncode == 0
    assert not folder.exists() and not prepared.exists()

    r = rt_process(cache, "cache", "import", str(out))
    assert r.returncode == 0, r.stderr
    assert "imported 2 compile entries" in r.stdout
    assert {p: snapshot(p) for p in before} == before
    assert (folder / ARTIFACTS).read_bytes() == before[folder][ARTIFACTS]
    assert (folder / MANIFEST).read_bytes() == before[folder][MANIFEST]

    # importing again replaces the entries in place
    assert rt_process(cache, "cache", "import", str(out)).returncode == 0
    assert {p: snapshot(p) for p in before} == before
    # no staging or replaced folders are left behind
    assert sorted(p.name for p in (cache / "compile").iterdir()) == sorted(
        [folder.name, inductor_only.name]
    )
    assert [p.name for p in prepared.parent.iterdir() if p.is_dir()] == [prepared.name]


def test_import_into_another_cache_and_export_by_model(rt, cache, tmp_path):
    wanted = make_entry(cache)
    make_entry(cache, model="other")
    make_prepared(cache)
    make_prepared(cache, "other-0123456789abcdef/rank0-of-1")
    out = tmp_path / "tiny.tar"
    r = rt(cache, "cache", "export", str(out), "--model", "tiny")
    assert r.returncode == 0, r.stderr

    second = tmp_path / "second"
    r = rt(second, "cache", "import", str(out))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (second / "compile").iterdir()] == [wanted.name]
    assert snapshot(second / "compile" / wanted.name) == exported(wanted)
    assert [p.name for p in (second / "prepared").iterdir()] == ["tiny-0123456789abcdef"]

    custom = tmp_path / "custom-root"
    assert rt(second, "cache", "import", str(out), "--cache-dir", str(custom)).returncode == 0
    assert (custom / wanted.name / ARTIFACTS).is_file()


@pytest.mark.parametrize(
    ("fault", "reason"), [("ro", "Read-only file system"), ("full", "No space left on device")]
)
def test_import_into_a_cache_that_cannot_take_it_names_the_folder_and_the_fix(
    cache, tmp_path, fault, reason
):
    folder = make_entry(cache)
    write_atomic(folder / ARTIFACTS, os.urandom(2 << 20))  # past the full cache's 1 MiB
    archive_file = tmp_path / "cache.tar"
    assert rt_process(cache, "cache", "export", str(archive_file)).returncode == 0
    (tmp_path / "faulty").mkdir()
    with faulty_cache(tmp_path / "faulty", fault) as faulty:
        r = subprocess.run(
            [sys.executable, "-m", "rt", "cache", "import", str(archive_file)],
            capture_output=True,
            text=True,
            env={**os.environ, **faulty.env},
            timeout=60,
        )
        assert r.returncode == 1, (faulty.how, r.stderr)
        # it was "rt: error: cannot import FILE: [Errno 28] No space left on device"
        assert r.stderr == (
            f"rt: error: cannot import {archive_file}: cannot write to {faulty.path}/compile: "
            f"{reason}; free space there, or import into another folder (RT_CACHE_DIR, or "
            "--cache-dir for the compile entries); nothing was imported\n"
        ), faulty.how
        left = [p for p in faulty.path.rglob("*") if p.is_file()]
        assert left == [], faulty.how


def test_export_with_nothing_to_export_fails(rt, cache, tmp_path):
    r = rt(cache, "cache", "export", str(tmp_path / "x.tar"))
    assert r.returncode != 0 and "nothing to export" in r.stderr
    make_entry(cache)
    r = rt(cache, "cache", "export", str(tmp_path / "x.tar"), "--model", "absent")
    assert r.returncode != 0 and "'absent'" in r.stderr
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("torch", "1.0.0+foreign"), ("device", "Imaginary Accelerator 9000")],
)
def test_import_refuses_an_entry_of_another_machine(rt, cache, tmp_path, field, value):
    make_entry(cache, **{field: value})
    make_prepared(cache)
    out = tmp_path / "foreign.tar"
    assert rt(cache, "cache", "export", str(out)).returncode == 0

    second = tmp_path / "second"
    r = rt(second, "cache", "import", str(out))
    assert r.returncode == 2
    here = installed_versions()["torch"] if field == "torch" else device_name("cpu")
    assert f"{field} is {value!r} in the archive" in r.stderr and repr(here) in r.stderr
    assert str(out) in r.stderr and "--force" in r.stderr
    assert not second.exists()  # nothing written, not even the prepared weights

    r = rt(second, "cache", "import", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and field in r.stderr
    assert len(list((second / "compile").iterdir())) == 1
    assert (second / "prepared" / PREPARED / "weights.safetensors").is_file()


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _index(**changes) -> bytes:
    index = {"format": 1, "rt": "0.1.0", "created": 0, "entries": [], "prepared": [PREPARED]}
    return json.dumps({**index, **changes}).encode()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("text", "not a tar file"),
        ("no-index", "no rt-cache.json"),
        ("format", "format 99"),
        ("traversal", "'../evil'"),
        ("absolute", "'/tmp/evil'"),
        ("link", "link"),
        ("stray", "belongs to no entry"),
        ("key", "'../evil-"),
    ],
)
def test_import_refuses_a_file_that_is_not_a_good_archive(rt, cache, tmp_path, case, reason):
    bad = tmp_path / "bad.tar"
    weights = f"prepared/{PREPARED}/weights.safetensors"
    if case == "text":
        bad.write_text("hello\n")
    elif case == "no-index":
        _tar(bad, {weights: b"x"})
    elif case == "format":
        _tar(bad, {"rt-cache.json": _index(format=99)})
    elif case == "traversal":
        _tar(bad, {"rt-cache.json": _index(), "../evil": b"owned"})
    elif case == "absolute":
        _tar(bad, {"rt-cache.json": _index(), "/tmp/evil": b"owned"})
    elif case == "link":
        _tar(bad, {"rt-cache.json": _index()}, links={weights: "/etc/passwd"})
    elif case == "stray":
        _tar(bad, {"rt-cache.json": _index(), "prepared/elsewhere/rank0-of-1/x": b"x"})
    else:  # a key whose model name would place the entry outside the cache
        key = attrs.evolve(CompileKey(*["x"] * 5, 1, 0, *["x"] * 3), model="../evil")
        entry = {"dir": key.dirname, "manifest": {"key": attrs.asdict(key)}}
        _tar(bad, {"rt-cache.json": _index(entries=[entry])})
    r = rt(cache, "cache", "import", str(bad))
    assert r.returncode == 2, r.stderr
    assert str(bad) in r.stderr and reason in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not cache.exists() and not (tmp_path / "evil").exists()


def test_clear_needs_yes_without_a_tty(cache):
    folder = make_entry(cache)
    r = rt_process(cache, "cache", "clear")
    assert r.returncode != 0 and "--yes" in r.stderr
    assert folder.is_dir()


def test_clear_yes_frees_the_bytes(rt, cache):
    entry = folder_bytes(make_entry(cache))
    prepared = make_prepared(cache)
    r = rt(cache, "cache", "clear", "--yes", "--compile-only")
    assert r.returncode == 0, r.stderr
    assert "removed 1 compile entry" in r.stdout
    assert f"freed {human_bytes(entry)}" in r.stdout
    assert prepared.is_dir()

    left = folder_bytes(cache / "prepared")
    r = rt(cache, "cache", "clear", "--yes")
    assert r.returncode == 0, r.stderr
    assert f"freed {human_bytes(left)}" in r.stdout
    assert not (cache / "prepared").exists()
    assert json.loads(rt(cache, "cache", "ls", "--json").stdout) == []
    assert "nothing to remove" in rt(cache, "cache", "clear", "--yes").stdout


def test_a_gpu_entry_is_checked_against_the_gpus_and_triton_here():
    from rt.plugins.cache_cli import Machine

    here = Machine()
    here._gpus = ["NVIDIA Test GPU"]  # as torch.cuda would name it
    key = CompileKey(*["x"] * 5, 1, 0, here.torch, here.triton, "NVIDIA Test GPU")
    assert here.mismatches(key) == []
    assert here.mismatches(attrs.evolve(key, triton="0.0.1")) == [
        f"triton is '0.0.1' in the archive, {here.triton!r} here"
    ]
    (problem,) = here.mismatches(attrs.evolve(key, device="NVIDIA Other GPU"))
    assert problem.startswith("device is 'NVIDIA Other GPU' in the archive")
    assert "'NVIDIA Test GPU' here" in problem
