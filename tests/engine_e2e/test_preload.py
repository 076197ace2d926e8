"""The preload hookimpls: each can be switched off by config, each shows in the timeline,
and the prefetch reads exactly the weight files load-weights then opens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine_e2e.engine_helpers import start_runtime

PRELOAD_PLUGINS = {
    "preload-imports": "preload.import_modules",
    "preload-prefetch": "preload.prefetch",
    "preload-forkserver": "preload.forkserver",
}


def _hook_span(runtime, plugin):
    return next(
        s
        for s in runtime.timeline.spans()
        if s.stage == "preload" and s.kind == "hook" and s.plugin == plugin
    )


def _task(runtime, plugin, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in runtime.timeline.spans():
            if s.kind == "task" and s.plugin == plugin and s.end is not None:
                return s
        time.sleep(0.05)
    raise AssertionError(f"no finished {plugin} task")


@pytest.mark.parametrize("plugin,key", sorted(PRELOAD_PLUGINS.items()))
def test_each_preload_hookimpl_can_be_switched_off(tiny_llama, plugin, key):
    runtime = start_runtime(tiny_llama, (key, "false"), ("parallel.tp", "1"))
    try:
        span = _hook_span(runtime, plugin)
        assert span.outcome == "skipped" and span.reason == f"{key} is off"
        assert not [s for s in runtime.timeline.spans() if s.kind == "task" and s.plugin == plugin]
    finally:
        runtime.shutdown()


def test_preload_work_shows_in_the_timeline(tiny_llama):
    runtime = start_runtime(tiny_llama)
    try:
        assert _hook_span(runtime, "preload-imports").outcome == "ok"
        imports = _task(runtime, "preload-imports")
        assert imports.outcome == "ok"
        # torch was imported by this test process already: nothing left to load early
        assert imports.notes["torch_libraries"] == "torch was already imported"
        forkserver = _hook_span(runtime, "preload-forkserver")
        assert forkserver.outcome == "skipped" and "TP=1" in forkserver.reason
    finally:
        runtime.shutdown()


@pytest.mark.parametrize("quantization", ["none", "int4"])
def test_prefetch_reads_exactly_the_weight_files_load_weights_opens(
    tiny_llama, tmp_path, monkeypatch, quantization
):
    # int4 weights are prepared under their own key: the driver's plan must name it too
    monkeypatch.setenv("RT_CACHE_DIR", str(tmp_path))  # no prepared weights yet
    for expected_source in ("checkpoint", "prepared"):
        runtime = start_runtime(tiny_llama, ("model.quantization", quantization))
        try:
            runner = runtime.result("load-weights")
            assert runner.quantization == quantization
            task = _task(runtime, "preload-prefetch")
            prefetched = [Path(f) for f in task.notes["files"]]
            weights = [f for f in prefetched if f.suffix == ".safetensors"]
            assert weights == runner.opened_files
            # every byte of those files was read, or found in the page cache already
            assert task.notes["read"] + task.notes["already_cached"] == task.notes["bytes"]
            assert task.notes["bytes"] == sum(p.stat().st_size for p in prefetched)
            hook = next(
                s
                for s in runtime.timeline.spans()
                if s.stage == "load-weights" and s.kind == "hook"
            )
            assert hook.notes["from"] == expected_source
            assert {p.name for p in prefetched} >= {"config.json", "tokenizer.json"}
        finally:
            runtime.shutdown()  # waits for the prepared weights to be saved


def test_loading_torch_libraries_early_can_be_switched_off(tiny_llama):
    runtime = start_runtime(tiny_llama, ("preload.torch_libraries", "false"))
    try:
        imports = _task(runtime, "preload-imports")
        assert imports.outcome == "ok" and "torch_libraries" not in imports.notes
    finally:
        runtime.shutdown()


def test_sequential_startup_starts_nothing_at_cli_entry(tiny_llama, tmp_path):
    """--sequential-startup is the baseline: the imports run inside the preload stage,
    not from CLI entry beside everything else."""
    import json

    from tests.conftest import run_rt

    trace = tmp_path / "trace.json"
    result = run_rt(
        "generate", str(tiny_llama), "Hi", "--max-tokens", "2", "--sequential-startup",
        "--startup-trace", str(trace),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"]
    stage = next(e for e in events if e["name"] == "preload" and e["cat"] == "stage")
    task = next(
        e for e in events if e["cat"] == "task" and e["args"]["plugin"] == "preload-imports"
    )
    assert "started" not in task["args"]["notes"]
    assert task["ts"] >= stage["ts"], "the import began inside the preload stage"


def test_work_started_at_cli_entry_is_timed_from_its_start_to_its_end():
    """Work that began (and maybe finished) before the preload stage records it keeps
    its own start and end in the timeline, not the stage's."""
    import types

    from rt.core.timeline import Timeline
    from rt.plugins.tp.preload import _background, _Early

    early = _Early("rt-test", lambda: time.sleep(0.05) or {"done": 1}, thread=False)
    time.sleep(0.1)  # the preload stage runs well after the work ended
    timeline = Timeline()
    runtime = types.SimpleNamespace(
        timeline=timeline,
        config=types.SimpleNamespace(startup=types.SimpleNamespace(sequential=True)),
    )
    _background(runtime, "preload-test", early.record, runtime)
    (span,) = timeline.spans()
    assert (span.start, span.end) == (early.start, early.end)
    assert 0.04 < span.end - span.start < 0.09
    assert span.notes == {"done": 1, "started": "at CLI entry"}


def test_gc_paused_restores_the_collector_as_it_found_it():
    import gc

    from rt.plugins.tp.paused_gc import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled(), "a collector someone else paused stays paused"
    finally:
        gc.enable()
