"""The stage scheduler: ordering, real concurrency, failures, background stages."""

from __future__ import annotations

import threading
import time

import pytest
from rt.core import SkipStage, Stage, StageFailed, StageGraphError, hookimpl, hookspec
from rt.core.errors import RtError
from rt.core.graph import check_graph
from rt.core.startup import run_startup

from tests.core.helpers import runtime_with


class Specs:
    @hookspec(firstresult=True)
    def rt_alpha(self, config, runtime):
        """Example:: test hook"""

    @hookspec(firstresult=True)
    def rt_beta(self, config, runtime):
        """Example:: test hook"""

    @hookspec
    def rt_gamma(self, config, runtime):
        """Example:: test hook (collecting)"""


def stage(name: str, hook: str, needs=(), **kw) -> Stage:
    return Stage(name=name, hook=hook, needs=needs, specs=Specs if name == "alpha" else None, **kw)


class Sleepy:
    @hookimpl
    def rt_alpha(self):
        time.sleep(0.5)
        return "a"

    @hookimpl
    def rt_beta(self):
        time.sleep(0.5)
        return "b"


def test_independent_stages_overlap_with_the_concurrent_scheduler():
    rt = runtime_with(
        [("sleepy", Sleepy())], [stage("alpha", "rt_alpha"), stage("beta", "rt_beta")]
    )
    start = time.perf_counter()
    run_startup(rt)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.9
    a, b = rt.timeline.stage_spans()
    assert a.start < b.end and b.start < a.end, "the timeline shows the overlap"
    assert rt.results == {"alpha": "a", "beta": "b"}


def test_sequential_startup_runs_one_stage_at_a_time():
    rt = runtime_with(
        [("sleepy", Sleepy())],
        [stage("alpha", "rt_alpha"), stage("beta", "rt_beta")],
        sequential=True,
    )
    start = time.perf_counter()
    run_startup(rt)
    assert time.perf_counter() - start > 1.0
    a, b = rt.timeline.stage_spans()
    assert a.end <= b.start


def test_needs_are_respected_and_results_flow():
    seen = []

    class P:
        @hookimpl
        def rt_alpha(self):
            seen.append("alpha")
            return 1

        @hookimpl
        def rt_beta(self, runtime):
            seen.append("beta")
            return runtime.result("alpha") + 1

    rt = runtime_with(
        [("p", P())], [stage("beta", "rt_beta", needs=("alpha",)), stage("alpha", "rt_alpha")]
    )
    run_startup(rt)
    assert seen == ["alpha", "beta"]
    assert rt.results["beta"] == 2


def test_a_cycle_names_its_stages():
    with pytest.raises(StageGraphError, match=r"cycle: alpha -> beta -> alpha"):
        check_graph(
            [
                stage("alpha", "rt_alpha", needs=("beta",)),
                stage("beta", "rt_beta", needs=("alpha",)),
            ]
        )


def test_unknown_needs_names_both_stages():
    with pytest.raises(StageGraphError, match=r"stage 'alpha' needs unknown stage 'load-wieghts'"):
        check_graph([stage("alpha", "rt_alpha", needs=("load-wieghts",))])


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(StageGraphError, match=r"duplicate stage name 'alpha'"):
        check_graph([stage("alpha", "rt_alpha"), stage("alpha", "rt_beta")])


def test_a_failing_hookimpl_names_stage_plugin_and_traceback():
    class Broken:
        @hookimpl
        def rt_alpha(self):
            raise ValueError("checkpoint is corrupt")

    class Fine:
        @hookimpl
        def rt_beta(self):
            return "b"

    rt = runtime_with(
        [("broken-plugin", Broken()), ("fine", Fine())],
        [stage("alpha", "rt_alpha"), stage("beta", "rt_beta", needs=("alpha",))],
    )
    with pytest.raises(StageFailed) as info:
        run_startup(rt)
    message = str(info.value)
    assert "stage 'alpha' failed in plugin 'broken-plugin'" in message
    assert "ValueError: checkpoint is corrupt" in message
    assert (
        "original traceback" in message and 'raise ValueError("checkpoint is corrupt")' in message
    )
    spans = {(s.stage, s.kind): s for s in rt.timeline.spans()}
    assert spans[("alpha", "stage")].outcome == "failed"
    assert spans[("alpha", "hook")].plugin == "broken-plugin"
    assert spans[("beta", "stage")].outcome == "skipped"
    assert "not started" in spans[("beta", "stage")].reason
    assert not rt.ready.is_set()


def test_a_required_stage_without_implementation_fails_before_anything_runs():
    with pytest.raises(
        RtError, match=r"stage 'alpha' is required, but no selected plugin implements 'rt_alpha'"
    ):
        run_startup(runtime_with([], [stage("alpha", "rt_alpha", required=True)]))


def test_skips_are_recorded_with_their_reason():
    class NoCuda:
        @hookimpl
        def rt_alpha(self):
            raise SkipStage("no CUDA devices")

    rt = runtime_with(
        [("nocuda", NoCuda())], [stage("alpha", "rt_alpha"), stage("beta", "rt_beta")]
    )
    run_startup(rt)
    by_kind = {(s.stage, s.kind): s for s in rt.timeline.spans()}
    assert by_kind[("alpha", "stage")].outcome == "skipped"
    assert "no CUDA devices" in by_kind[("alpha", "stage")].reason
    assert by_kind[("alpha", "hook")].outcome == "skipped"
    assert by_kind[("beta", "stage")].reason == "no selected plugin implements rt_beta"


def test_firstresult_takes_the_first_plugin_that_answers_and_trylast_yields():
    class BuiltIn:
        @hookimpl(trylast=True)
        def rt_alpha(self):
            return "built-in"

    class ThirdParty:
        @hookimpl
        def rt_alpha(self):
            return "third-party"

    # Registration order must not matter: the built-in is registered last here.
    rt = runtime_with(
        [("third", ThirdParty()), ("builtin", BuiltIn())], [stage("alpha", "rt_alpha")]
    )
    run_startup(rt)
    assert rt.results["alpha"] == "third-party"
    hook_spans = [s for s in rt.timeline.spans() if s.kind == "hook"]
    assert [s.plugin for s in hook_spans] == ["third"], "the built-in was never called"


def test_collecting_hook_records_one_span_per_hookimpl():
    class One:
        @hookimpl
        def rt_gamma(self):
            return 1

    class Two:
        @hookimpl
        def rt_gamma(self):
            return 2

    rt = runtime_with(
        [("one", One()), ("two", Two())], [stage("alpha", "rt_alpha"), stage("gamma", "rt_gamma")]
    )
    run_startup(rt)
    assert sorted(rt.results["gamma"]) == [1, 2]
    hooks = sorted(s.plugin for s in rt.timeline.spans() if s.kind == "hook" and s.stage == "gamma")
    assert hooks == ["one", "two"]


def test_a_hookimpl_may_take_no_arguments_or_any_subset():
    class Subsets:
        @hookimpl
        def rt_alpha(self):
            return "none"

        @hookimpl
        def rt_beta(self, config):
            return config.parallel.tp

    rt = runtime_with(
        [("subsets", Subsets())], [stage("alpha", "rt_alpha"), stage("beta", "rt_beta")]
    )
    run_startup(rt)
    assert rt.results == {"alpha": "none", "beta": 1}


def test_background_stage_may_still_run_when_ready():
    release = threading.Event()

    class Slow:
        @hookimpl
        def rt_alpha(self):
            release.wait(10)
            return "table"

        @hookimpl
        def rt_beta(self):
            return "model"

    rt = runtime_with(
        [("slow", Slow())], [stage("alpha", "rt_alpha", background=True), stage("beta", "rt_beta")]
    )
    scheduler = run_startup(rt)
    assert rt.ready.is_set()
    assert rt.stage_state["alpha"] == "running" and rt.results == {"beta": "model"}
    release.set()
    assert scheduler.wait_background(timeout=10)
    assert rt.results["alpha"] == "table"
