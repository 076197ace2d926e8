"""The compile stage's contract: the CompileTarget protocol, the built-in plugin's modes,
and what /metrics reads back from the timeline."""

from __future__ import annotations

import logging
import threading

import attrs
import pytest
from rt.core.compile import CompileTarget, StepFunction, compile_state
from rt.core.stage import SkipStage
from rt.core.timeline import Timeline

from .helpers import LoadedRuntime


class FailingTarget:
    """A third-party target whose warm-up fails (a compiler that cannot build)."""

    def __init__(self) -> None:
        self.installed: list = []
        self.warmed = threading.Event()

    def step_functions(self):
        return [StepFunction("body", lambda x: x + 1, dynamic=False, sizes=(1,))]

    def compile_key(self):
        return dict(
            model="m", model_files="f", code="c", dtype="float32", quantization="none",
            tp=1, rank=0, device="cpu",
        )  # fmt: skip

    def warm(self, name, compiled):
        self.warmed.set()
        raise RuntimeError("no C++ compiler")

    def install_compiled(self, compiled, *, now):
        self.installed.append((compiled, now))


@attrs.frozen
class _Compile:
    mode: str
    cache_dir: str | None


@attrs.frozen
class _Config:
    compile: _Compile


def test_a_target_is_recognised_by_its_methods_alone():
    assert isinstance(FailingTarget(), CompileTarget)
    assert not isinstance(object(), CompileTarget)


def test_off_and_a_model_without_step_functions_are_recorded_skips(tmp_path):
    from rt.plugins.compile import rt_compile

    with pytest.raises(SkipStage, match="compile.mode is off"):
        rt_compile(_Config(_Compile("off", str(tmp_path))), LoadedRuntime(FailingTarget()))
    with pytest.raises(SkipStage, match="offers no step functions"):
        rt_compile(_Config(_Compile("default", str(tmp_path))), LoadedRuntime(object()))


def test_a_failed_background_compile_is_logged_and_installs_nothing(tmp_path, caplog):
    from rt.plugins.compile import rt_compile

    target = FailingTarget()
    config = _Config(_Compile("background", str(tmp_path)))
    with caplog.at_level(logging.ERROR, logger="rt.compile"):
        result = rt_compile(config, LoadedRuntime(target))  # returns while compiling
        assert result.mode == "background" and result.cache == "cold"
        assert target.warmed.wait(60)
        threads = [t for t in threading.enumerate() if t.name == "rt-compile"]
        for t in threads:
            t.join(60)
    assert target.installed == []  # the engine keeps its eager step
    assert "background compile failed" in caplog.text


def test_a_failed_default_compile_fails_the_stage(tmp_path):
    from rt.plugins.compile import rt_compile

    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        rt_compile(_Config(_Compile("default", str(tmp_path))), LoadedRuntime(FailingTarget()))


def _span(timeline: Timeline, plugin: str, kind: str, **notes) -> None:
    span = timeline.begin("compile", plugin, kind=kind)
    span.notes.update(notes)
    timeline.end(span, "ok")


def test_compile_state_reads_default_and_background_spans():
    assert compile_state(Timeline()) == (False, 0.0)
    default = Timeline()
    _span(default, "compile", "hook", seconds=12.5)
    assert compile_state(default) == (True, 12.5)
    background = Timeline()
    _span(background, "compile", "hook", background="compiling")
    assert compile_state(background) == (False, 0.0)
    _span(background, "compile", "task", seconds=40.0)
    assert compile_state(background) == (False, 40.0)  # compiled, not yet switched
    _span(background, "switch", "task")
    assert compile_state(background) == (True, 40.0)
