"""``rt bench generate`` divides the tokens the engine produced, not the tokens asked for."""

from __future__ import annotations

import threading
import time

import pytest
from rt.core.engine import GenerationOutput
from rt.plugins.bench import generate_worker

STEP_S = 0.002


class ShortEngine:
    """Produces ``produce`` tokens per request whatever ``max_tokens`` asks, one output per
    token from a thread of its own, as an engine's callbacks come."""

    def __init__(self, produce: int, finish_reason: str = "stop") -> None:
        self.produce = produce
        self.finish_reason = finish_reason

    def submit(self, request, on_output) -> None:
        def run() -> None:
            for i in range(self.produce):
                time.sleep(STEP_S)
                last = i == self.produce - 1
                on_output(
                    GenerationOutput(
                        request.request_id,
                        text="x",
                        token_ids=(7,),
                        finish_reason=self.finish_reason if last else None,
                    )
                )

        threading.Thread(target=run, daemon=True).start()


def test_rates_count_the_tokens_produced():
    spec = {"max_tokens": 64, "runs": 3, "concurrency": 4}
    figures = generate_worker.measure(ShortEngine(produce=8), spec)
    assert figures["single_tokens"] == [8, 8, 8]
    assert figures["concurrent_tokens"] == 4 * 8
    # 8 tokens at >= 2 ms each: at most ~500 tok/s a stream. Dividing the 64 tokens asked
    # for would report 8x that.
    assert 0 < figures["single_tok_s"] <= 1 / STEP_S
    assert 0 < figures["concurrent_tok_s"] <= 4 / STEP_S


def test_a_failed_request_is_no_figure():
    with pytest.raises(RuntimeError, match="ended with error"):
        generate_worker.measure(
            ShortEngine(produce=2, finish_reason="error"),
            {"max_tokens": 4, "runs": 1, "concurrency": 1},
        )
