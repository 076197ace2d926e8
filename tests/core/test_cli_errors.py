"""Errors the user can fix read as one line, not a crash (real ``rt`` processes).

Each case runs ``rt`` with nothing to download (``HF_HUB_OFFLINE=1``, an empty
``HF_HOME``) and checks the whole of stderr: one ``rt: error:`` line naming the bad value
and the fix, no traceback, the error's exit code. ``--debug`` (or ``RT_DEBUG=1``) adds
the traceback; a bug in a plugin prints its traceback without it. The cases that need a
servable model (a port in use, a TP size) are in tests/engine_e2e/test_cli_user_errors.py.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_distribution

PROMPT = "hello"


def rt_command() -> list[str]:
    """The installed ``rt`` script of this interpreter's environment (``.venv/bin/rt``)."""
    script = Path(sys.executable).with_name("rt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rt"]


def run_cli(
    tmp_path: Path, *args: str, preexec_fn=None, **env: str | None
) -> subprocess.CompletedProcess:
    """``rt ARGS`` offline, with its caches in ``tmp_path``; ``env`` adds (None: removes);
    ``preexec_fn`` runs in the child before ``rt`` (to set a limit)."""
    environ = {
        **os.environ,
        "RT_CACHE_DIR": str(tmp_path / "rt-cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    environ.pop("RT_DEBUG", None)
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run(
        [*rt_command(), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        preexec_fn=preexec_fn,
    )


def one_error_line(result: subprocess.CompletedProcess, exit_code: int, *needles: str) -> str:
    """The single stderr line, after checking the exit code, the prefix and ``needles``."""
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("rt: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_hub_id_not_cached_with_hf_hub_offline(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/not-cached", PROMPT)
    one_error_line(
        result,
        1,
        "'org/not-cached'",
        "not in the local Hugging Face cache",
        str(tmp_path / "hf"),
        "downloads are off",
        "unset HF_HUB_OFFLINE",
        "hf download org/not-cached",
        "pass a model folder",
    )


def test_hub_id_not_cached_with_offline_flag(tmp_path: Path) -> None:
    # No HF_HUB_OFFLINE: --offline alone keeps rt off the network.
    result = run_cli(
        tmp_path, "generate", "org/not-cached", PROMPT, "--offline", HF_HUB_OFFLINE=None
    )
    line = one_error_line(
        result, 1, "'org/not-cached'", "not in the local Hugging Face cache", "--offline"
    )
    assert "HF_HUB_OFFLINE" not in line


def test_model_folder_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = run_cli(tmp_path, "generate", str(missing), PROMPT)
    one_error_line(result, 1, repr(str(missing)), "no such folder", "pass a folder")


def test_bad_set_value(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--set", "server.port=abc")
    one_error_line(result, 2, "server.port", "'abc'", "--set server.port=abc")


def test_unknown_config_key(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--set", "model.ofline=true")
    one_error_line(result, 2, "'model.ofline'", "did you mean 'model.offline'?")


def test_unknown_profile(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--profile", "no-such-profile")
    one_error_line(result, 2, "'no-such-profile'", "available: fast-startup", ".toml")


def test_unknown_plugin(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--plugins", "no-such-plugin")
    one_error_line(result, 2, "no-such-plugin", "available:", "tp (built-in)")


def test_bad_sampling_option(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--temperature", "-1")
    one_error_line(result, 2, "temperature must be >= 0", "-1.0")


@pytest.mark.parametrize("args", [("caf\udcff",), (PROMPT, "--stop", "\udcfe")])
def test_text_that_is_not_utf8(tmp_path: Path, args: tuple[str, ...]) -> None:
    # A lone surrogate here is the byte 0xff (0xfe) on the command line (os.fsencode).
    result = run_cli(tmp_path, "generate", "org/x", *args)
    byte = "0xff" if args[0] != PROMPT else "0xfe"
    one_error_line(result, 2, "is not valid UTF-8", f"byte {byte}", "pass UTF-8 text")


def test_an_open_files_limit_too_low_to_start(tmp_path: Path) -> None:
    # Below it torch's rendezvous fails without saying why, or hangs for two minutes.
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    result = run_cli(tmp_path, "generate", "org/x", PROMPT, preexec_fn=low_limit)
    one_error_line(result, 1, "may hold only 64 open files", "ulimit -n", "LimitNOFILE=")


@pytest.mark.parametrize("how", ["--debug", "RT_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    missing = str(tmp_path / "no-such-model")
    if how == "--debug":
        result = run_cli(tmp_path, "generate", missing, PROMPT, "--debug")
    else:
        result = run_cli(tmp_path, "generate", missing, PROMPT, RT_DEBUG="1")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr
    assert "--- original traceback ---" in result.stderr, "names the stage that failed"
    assert "model_source.py" in result.stderr, "down to where the error was raised"
    last = result.stderr.splitlines()[-1]
    assert last.startswith("rt: error: ") and missing in last


def test_a_bug_in_a_plugin_prints_its_traceback(site_dir: Path, tmp_path: Path) -> None:
    write_distribution(
        site_dir,
        "rt-buggy",
        "1.0",
        {
            "rt_buggy": """
                from rt.core import hookimpl

                @hookimpl
                def rt_resolve_model(config):
                    return {}["no such key"]
            """
        },
        {"rt.plugins": {"buggy": "rt_buggy"}},
    )
    result = run_cli(tmp_path, "generate", "org/x", PROMPT, "--plugins", "buggy")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr
    assert "stage 'model' failed in plugin 'buggy': KeyError" in result.stderr
    assert "rt_buggy.py" in result.stderr


@pytest.mark.parametrize("command", [("generate", "hi"), ("zygote", "status")])
def test_a_deleted_working_directory(tmp_path: Path, command: tuple[str, ...]) -> None:
    # Every command, with or without a zygote: torch cannot even be imported there.
    gone = tmp_path / "gone"
    gone.mkdir()

    def enter_then_delete() -> None:
        os.chdir(gone)
        os.rmdir(gone)

    result = subprocess.run(
        [*rt_command(), *command],
        capture_output=True,
        text=True,
        env={**os.environ, "RT_CACHE_DIR": str(tmp_path / "rt-cache")},
        preexec_fn=enter_then_delete,
        timeout=120,
    )
    one_error_line(result, 2, "the current directory no longer exists", "cd to an existing")
