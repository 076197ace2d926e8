"""Prometheus metrics of one server, in its own ``CollectorRegistry``.

Request counters and latency histograms are updated by the app; engine state
(running and waiting sequences, KV blocks) and startup stage durations are read
at scrape time by a custom collector, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from rt.core.compile import compile_state
from rt.core.engine import engine_death

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _RuntimeCollector:
    """Engine stats and startup stage durations, read when scraped."""

    def __init__(self, runtime: Any):
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("rt_ready", "1 once startup finished and the engine serves")
        engine = self.runtime.services.get("engine") if self.runtime.ready.is_set() else None
        dead = engine_death(self.runtime) is not None
        ready.add_metric([], 1.0 if engine is not None and not dead else 0.0)
        yield ready
        deaths = CounterMetricFamily(
            "rt_engine_deaths", "Engine deaths (a rank died, a step failed): the server exits"
        )
        deaths.add_metric([], 1.0 if dead else 0.0)
        yield deaths
        stages = GaugeMetricFamily(
            "rt_startup_stage_duration_seconds",
            "Wall time of each finished startup stage",
            labels=["stage", "rank", "outcome"],
        )
        for span in self.runtime.timeline.stage_spans():
            if span.duration is not None:
                stages.add_metric([span.stage, str(span.rank), span.outcome], span.duration)
        yield stages
        compiled, seconds = compile_state(self.runtime.timeline)
        g = GaugeMetricFamily("rt_compiled", "1 once the ranks run the compiled step, else 0")
        g.add_metric([], 1.0 if compiled else 0.0)
        yield g
        g = GaugeMetricFamily("rt_compile_seconds", "Seconds compiling the step took (rank 0)")
        g.add_metric([], seconds)
        yield g
        if engine is None or dead:
            return
        try:
            s = engine.stats()
        except Exception:  # a dead engine must not break the scrape
            return
        for name, help_, value in (
            ("rt_num_requests_running", "Sequences in the running batch", s.running),
            ("rt_num_requests_waiting", "Sequences waiting to be scheduled", s.waiting),
            ("rt_kv_cache_blocks_used", "KV-cache blocks in use", s.kv_blocks_used),
            ("rt_kv_cache_blocks_free", "KV-cache blocks free", s.kv_blocks_free),
        ):
            g = GaugeMetricFamily(name, help_)
            g.add_metric([], float(value))
            yield g
        pre = CounterMetricFamily("rt_preemptions", "Sequences preempted for lack of KV blocks")
        pre.add_metric([], float(s.preemptions))
        yield pre


class ServerMetrics:
    def __init__(self, runtime: Any):
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "rt_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.finished = Counter(
            "rt_requests_finished",
            "Generation requests by finish reason (stop, length, abort, error)",
            ["finish_reason"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "rt_time_to_first_token_seconds",
            "From request arrival to the first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "rt_e2e_request_latency_seconds",
            "From request arrival to the last generated token",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "rt_prompt_tokens", "Prompt tokens of finished requests", registry=self.registry
        )
        self.completion_tokens = Counter(
            "rt_generation_tokens", "Generated tokens of finished requests", registry=self.registry
        )
        self.admitted = Gauge(
            "rt_requests_admitted",
            "Choices of generation requests (one per prompt and n) counted against "
            "server.max_concurrent_requests",
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(runtime))

    def render(self) -> bytes:
        return generate_latest(self.registry)
