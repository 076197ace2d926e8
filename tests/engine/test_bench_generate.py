"""``rt bench generate`` divides the tokens the engine produced, not the tokens asked for;
compile modes and numbers of streams are axes, side by side, with compiled / eager."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest
from rt.core import UsageError
from rt.core.cli import main
from rt.core.engine import GenerationOutput
from rt.plugins.bench import generate, generate_worker

from tests.serving_models import write_servable_model

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
    spec = {"max_tokens": 64, "runs": 3, "concurrency": [1, 4]}
    figures = generate_worker.measure(ShortEngine(produce=8), spec)
    one, four = figures["1"], figures["4"]
    assert one["tokens"] == [8, 8, 8]
    assert four["tokens"] == [4 * 8]
    # 8 tokens at >= 2 ms each: at most ~500 tok/s a stream. Dividing the 64 tokens asked
    # for would report 8x that.
    assert 0 < one["tok_s"] <= 1 / STEP_S
    assert 0 < four["tok_s"] <= 4 / STEP_S
    # decode: the 7 tokens after the first over the time from the first to the last
    assert 0 < one["decode_tok_s"] <= 1 / STEP_S
    assert 0 < one["ttft_s"] < 1


def test_a_failed_request_is_no_figure():
    with pytest.raises(RuntimeError, match="ended with error"):
        generate_worker.measure(
            ShortEngine(produce=2, finish_reason="error"),
            {"max_tokens": 4, "runs": 1, "concurrency": [1]},
        )


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate.register(parser.add_subparsers())
    return parser.parse_args(["generate", *argv])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "1,0"], "--concurrency takes positive integers"),
        (["--concurrency", "16,16"], "--concurrency names a value twice"),
        (["--compile", "off,fast"], "--compile: unknown value 'fast'"),
    ],
)
def test_bad_axes_fail_before_any_child_starts(argv, message, monkeypatch):
    monkeypatch.setattr(generate, "run_worker", lambda *a, **k: pytest.fail("a child started"))
    early = argparse.Namespace(plugins=None, set=None, profile=None, config=None)
    with pytest.raises(UsageError, match=message):
        generate.bench_generate(_args(argv), argparse.Namespace(early=early))


def _variant(mode, decode_1, decode_16, compile_s=None):
    def streams(tok_s, decode):
        return {"tok_s": tok_s, "decode_tok_s": decode, "tokens": [64], "ttft_s": 0.01}

    return {
        "compile_mode": mode,
        "dtype": "float32",
        "quantization": "int4",
        "streams": {"1": streams(20.0, decode_1), "16": streams(160.0, decode_16)},
        "compile_s": compile_s,
        "peak_rss_bytes": 2**30,
    }


def test_compiled_over_eager_per_number_of_streams_and_missing_figures_as_dashes(capsys):
    result = {
        "machine": {"cpu": "Some CPU"},
        "model": "m",
        "max_tokens": 64,
        "variants": {
            "rt compile=default": _variant("default", 30.0, 300.0, compile_s=12.5),
            "rt compile=off": _variant("off", 20.0, None),
        },
        "transformers": {"streams": {"1": {"tok_s": 10.0, "api": "generate"}}},
    }
    result["ratios"] = generate.ratios(result)
    assert result["ratios"] == {
        "compile=default / compile=off (decode tok/s)": {"1": 1.5, "16": None},
        "rt compile=default / transformers (tok/s)": {"1": 2.0},
        "rt compile=off / transformers (tok/s)": {"1": 2.0},
    }
    generate._print(result)
    out = capsys.readouterr().out.splitlines()
    assert "Some CPU" in out[0]
    rows = [line.split() for line in out if line.startswith(("rt ", "transformers "))]
    assert rows[0] == ["rt", "compile=default", "1", "stream", "20.0", "30.0", "10", "64", "12.50"]
    assert rows[3] == ["rt", "compile=off", "16", "streams", "160.0", "-", "10", "64", "-"]
    assert rows[4][:5] == ["transformers", "generate", "1", "stream", "10.0"]
    assert "compile=default / compile=off (decode tok/s): 1 stream 1.50x, 16 streams -" in out[-3]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_servable_model(tmp_path_factory.mktemp("tiny-generate"), "llama_gqa_tied", seed=1)


def test_bench_generate_on_a_tiny_model(tiny_model, capsys):
    argv = ["bench", "generate", str(tiny_model), "--compile", "off", "--concurrency", "1,2"]
    argv += ["--max-tokens", "4", "--runs", "1", "--no-transformers", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["concurrency"] == [1, 2] and out["machine"]["cpu"]
    v = out["variants"]["rt compile=off"]
    assert v["compile_mode"] == "off" and "compile" in v["stages"]
    assert v["compile_s"] is None or v["compile_s"] < 1  # off: nothing compiles
    assert v["streams"]["1"]["tokens"] == [4] and v["streams"]["2"]["tokens"] == [8]
    assert v["streams"]["2"]["tok_s"] > 0
