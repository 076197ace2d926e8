"""The CLI builds what the command it runs needs, and the whole parser otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs `rt ARGS` in a fresh interpreter, then names the benchmark modules it imported.
_PROBE = (
    "import sys\n"
    "from rt.core.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print('BENCH', sorted(m for m in sys.modules if m.startswith('rt.plugins.bench.')))\n"
)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120
    )


def test_a_command_other_than_bench_imports_no_benchmark():
    out = _run("serve", "--help")
    assert out.returncode == 0, out.stderr
    assert "--startup-only" in out.stdout  # its own options are all there
    assert "--plugins" in out.stdout  # and the config options every command takes
    assert "BENCH []" in out.stdout


@pytest.mark.parametrize("args", [["bench", "--help"], ["--help"]], ids=" ".join)
def test_bench_and_the_top_level_help_register_every_benchmark(args):
    out = _run(*args)
    assert out.returncode == 0, out.stderr
    assert "rt.plugins.bench.startup" in out.stdout.split("BENCH", 1)[1]


def test_a_benchmark_keeps_its_options():
    out = _run("bench", "startup", "--help")
    assert out.returncode == 0, out.stderr
    assert "--zygote" in out.stdout and "--profile" in out.stdout


def test_an_unknown_command_is_named_with_the_choices():
    out = _run("frobnicate")
    assert "invalid choice: 'frobnicate'" in out.stderr
    assert "'serve'" in out.stderr and "'bench'" in out.stderr
