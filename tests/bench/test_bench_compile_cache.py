"""``rt bench compile-cache``: cold, warm and imported compile caches, each start in a
child process on its own cache folder that shares the converted models; cold / this
per situation; a missing ``rt cache`` command fails the imported leg clearly."""

from __future__ import annotations

import json
import subprocess

import pytest
from rt.core import RtError
from rt.core.cli import main
from rt.plugins.bench import compile_cache

from tests.serving_models import write_servable_model


def _run(compile_s, found=None):
    notes = {"cache": found} if found else {}
    return {"compile_s": compile_s, "cache_bytes": 1024, "model": "m", "compile_notes": notes}


def test_cold_over_each_situation_and_missing_seconds_as_dashes(capsys):
    rounds = [
        {"cold": _run(30.0, "cold"), "warm": _run(3.0, "warm"), "imported": _run(None)},
        {"cold": _run(34.0, "cold"), "warm": _run(5.0, "warm"), "imported": _run(None)},
    ]
    r = compile_cache.summarize(rounds)["situations"]
    assert [r[s]["compile_s"] for s in ("cold", "warm", "imported")] == [32.0, 4.0, None]
    assert [r[s]["cold_over_this"] for s in ("cold", "warm", "imported")] == [1.0, 8.0, None]
    result = {"situations": r, "machine": {"cpu": "Some CPU"}, "runs": 2, "mode": "default"}
    compile_cache.print_results({**result, "model": "m"})
    lines = capsys.readouterr().out.splitlines()
    assert "Some CPU" in lines[0] and "compile.mode=default" in lines[0]
    assert lines[3].split() == ["cold", "32.000", "1.00x", "0.0", "cold", "ok"]
    assert lines[4].split() == ["warm", "4.000", "8.00x", "0.0", "warm", "ok"]
    assert lines[5].split() == ["imported", "-", "-", "0.0", "-", "ok"]


def test_a_failed_import_is_reported_for_its_leg(capsys):
    rounds = [{"cold": _run(None), "warm": _run(None), "imported": {"error": "no rt cache"}}]
    r = compile_cache.summarize(rounds)
    compile_cache.print_results({**r, "machine": {}, "runs": 1, "mode": "default", "model": "m"})
    out = capsys.readouterr().out
    assert out.splitlines()[5].split() == ["imported", "-", "-", "-", "-", "failed", "(below)"]
    assert "no compile stage ran" in out
    assert out.splitlines()[-1] == "  imported: no rt cache"


def test_without_an_rt_cache_command_the_message_says_so(monkeypatch, tmp_path):
    def run(cmd, **kwargs):
        err = "rt: error: argument COMMAND: invalid choice: 'cache' (choose from 'serve')"
        return subprocess.CompletedProcess(cmd, 2, "", err)

    monkeypatch.setattr(compile_cache.subprocess, "run", run)
    with pytest.raises(RtError, match="this rt has no `rt cache` command"):
        compile_cache.cache_command("export", tmp_path / "f.tar.gz", tmp_path, {})


def test_a_situation_shares_everything_but_prepared_weights_and_compile(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    for name in ("models", "prepared", "compile"):
        (shared / name).mkdir(parents=True)
    (shared / "cpu-decode-layout.json").write_text("{}")
    monkeypatch.setenv("RT_CACHE_DIR", str(shared))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/shared")
    s = compile_cache.situation_dir(tmp_path / "cold")
    assert sorted(p.name for p in s.iterdir()) == ["compile", "cpu-decode-layout.json", "models"]
    assert (s / "models").resolve() == shared / "models" and not (s / "compile").is_symlink()
    env = compile_cache.child_env(s, tmp_path / "tmp")
    assert env["RT_CACHE_DIR"] == str(s) and env["TMPDIR"] == str(tmp_path / "tmp")
    assert "TORCHINDUCTOR_CACHE_DIR" not in env


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_servable_model(tmp_path_factory.mktemp("tiny-compile"), "llama_gqa_tied", seed=1)


def test_bench_compile_cache_on_a_tiny_model(tiny_model, capsys):
    code = main(["bench", "compile-cache", str(tiny_model), "--mode", "off", "--json"])
    out = json.loads(capsys.readouterr().out)
    s = out["situations"]
    assert list(s) == ["cold", "warm", "imported"] and out["machine"]["cpu"]
    assert s["cold"]["compile_s"] is None and s["cold"]["cold_over_this"] is None
    # the imported leg needs `rt cache export/import`; without it, it fails by itself
    assert code == (1 if "error" in s["imported"] else 0), s["imported"].get("error")
