"""Child process of ``rt bench generate`` and ``rt bench compile-cache``: starts one
side (rt's engine, or transformers), measures it and prints JSON.

The rt side also reports rank 0's startup stages from its timeline, the compile
stage's seconds among them (``None`` when the stage did not run)."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import threading
import time
from typing import Any

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "Explain what a CPU does.",
    "List three fruits:",
    "Once upon a time",
    "The best way to learn Python is",
    "Translate 'good morning' into Spanish:",
    "Why is the sky blue?",
    "A recipe for pancakes:",
    "The history of Rome began",
    "def fibonacci(n):",
    "Three facts about the moon:",
    "My favourite book is",
    "How do airplanes fly?",
    "The weather today is",
    "In 1969, humans",
]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _batch(engine: Any, streams: int, params: Any, tag: str) -> dict[str, Any]:
    """Submit ``streams`` requests at once and time every output as it comes.

    ``tok_s`` divides all tokens produced by the wall time; ``decode_tok_s`` counts only
    the tokens that came after every stream had its first (prefill done for all), over
    the time from then to the last token: the rate of the decode steps alone."""
    from rt.core.engine import GenerationRequest

    finished = threading.Semaphore(0)
    # (arrival, output); list.append is atomic: callbacks may come from any thread
    timed: list[tuple[float, Any]] = []

    def on_output(output: Any) -> None:
        timed.append((time.perf_counter(), output))
        if output.finished:
            finished.release()

    start = time.perf_counter()
    for i in range(streams):
        prompt = PROMPTS[i % len(PROMPTS)]
        engine.submit(GenerationRequest(f"{tag}-{i}", prompt=prompt, sampling=params), on_output)
    for _ in range(streams):
        finished.acquire()
    elapsed = time.perf_counter() - start
    outputs = [o for _, o in timed]
    _check_finished(outputs)
    first: dict[str, float] = {}
    for t, o in timed:  # appended from several threads: not strictly in time order
        first[o.request_id] = min(t, first.get(o.request_id, t))
    all_started = max(first.values())
    after = [(t, len(o.token_ids)) for t, o in timed if t > all_started]
    span = max((t for t, _ in after), default=all_started) - all_started
    return {
        "tok_s": sum(len(o.token_ids) for o in outputs) / elapsed,
        "decode_tok_s": sum(n for _, n in after) / span if span > 0 else None,
        "tokens": sum(len(o.token_ids) for o in outputs),
        "ttft_s": statistics.median(t - start for t in first.values()),
    }


def _check_finished(outputs: list[Any]) -> None:
    """Raise (in the measuring thread: the engine's callback thread must not) if a request
    failed: a rate over a failed request's tokens is no figure."""
    failed = [o for o in outputs if o.finish_reason in ("error", "abort")]
    if failed:
        o = failed[0]
        raise RuntimeError(f"request {o.request_id} ended with {o.finish_reason}: {o.error}")


def _rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def measure(engine: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s for each number of concurrent streams in ``spec["concurrency"]``.

    One stream is measured ``runs`` times (medians are reported), more streams once.
    Rates divide the tokens the engine produced, not the ``max_tokens`` asked for: a
    request that ends early (a stop token, an error) must not count as a full one.

    Example: ``measure(engine, {"max_tokens": 64, "runs": 3, "concurrency": [1, 16]})``
    gives ``{"1": {"tok_s", "decode_tok_s", "tokens", "ttft_s"}, "16": {...}}``."""
    from rt.core.step import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    out: dict[str, Any] = {}
    for streams in spec["concurrency"]:
        repeats = spec["runs"] if streams == 1 else 1
        rounds = [_batch(engine, streams, params, f"c{streams}-{i}") for i in range(repeats)]
        decode = [r["decode_tok_s"] for r in rounds if r["decode_tok_s"] is not None]
        out[str(streams)] = {
            "tok_s": round(statistics.median(r["tok_s"] for r in rounds), 1),
            "decode_tok_s": _rounded(statistics.median(decode) if decode else None),
            "tokens": [r["tokens"] for r in rounds],
            "ttft_s": round(statistics.median(r["ttft_s"] for r in rounds), 4),
        }
    return out


def stage_figures(runtime: Any) -> dict[str, Any]:
    """Rank 0's stage durations and outcomes from the startup timeline, the compile
    stage's seconds and the notes its plugin left (``cache``: cold, warm or imported).
    The seconds are ``None`` unless the stage ran (skipped when no plugin implements it
    or compile.mode is off) and compiled before startup ended (not ``background``)."""
    spans = [s for s in runtime.timeline.spans() if s.rank == 0 and s.kind in ("stage", "hook")]
    stages = {
        s.stage: {"s": _rounded(s.duration, 4), "outcome": s.outcome}
        for s in spans
        if s.kind == "stage"
    }
    notes: dict[str, str] = {}
    for s in spans:
        if s.stage == "compile":
            notes.update({k: str(v) for k, v in s.notes.items()})
    ran = stages.get("compile", {}).get("outcome") == "ok" and "background" not in notes
    return {
        "stages": stages,
        "compile_s": stages["compile"]["s"] if ran else None,
        "compile_notes": notes,
    }


def rt_side(spec: dict[str, Any]) -> dict[str, Any]:
    from rt.core.discovery import discover
    from rt.core.engine import GenerationRequest, generate_blocking
    from rt.core.profile_registry import load_config
    from rt.core.selection import select
    from rt.core.startup import create_runtime, run_startup
    from rt.core.step import SamplingParams

    pairs = [tuple(p) for p in spec["cli"]] + [("startup.print_timeline", "false", "bench")]
    if spec["model"]:
        pairs.append(("model.source", spec["model"], "MODEL"))
    # the invocation's --profile and --config, as `rt generate` would read them
    config = load_config(spec.get("profile"), spec.get("config_file"), None, pairs)
    runtime = create_runtime(config, select(discover(), config.plugins), exclude=["frontend"])
    run_startup(runtime)
    engine = runtime.services["engine"]
    figures = measure(engine, spec)  # nothing when spec["concurrency"] is empty
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    out = generate_blocking(engine, GenerationRequest("check", prompt=PROMPTS[0], sampling=params))
    result = {
        "model_name": runtime.result("model").name,
        "model_path": str(runtime.result("model").path),
        "dtype": str(runtime.result("load-weights").dtype).removeprefix("torch."),
        "quantization": runtime.result("load-weights").quantization,
        "streams": figures,
        **stage_figures(runtime),
        "peak_rss_bytes": _peak_rss(),
        "tokens_checked": len(out.token_ids),
    }
    runtime.shutdown()
    return result


def transformers_side(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    path = spec["model_path"]
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    # The same weights in the same dtype as rt ran them.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, spec["dtype"])).eval()
    n = spec["max_tokens"]
    ids = torch.tensor([tok.encode(PROMPTS[0]).ids])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up, as rt's warmup stage
    streams: dict[str, Any] = {}
    for c in spec["concurrency"]:
        if c == 1:
            with torch.inference_mode():
                single = []
                for _ in range(spec["runs"]):
                    start = time.perf_counter()
                    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                    single.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
            streams["1"] = {"tok_s": round(statistics.median(single), 1), "api": "generate"}
        else:
            streams[str(c)] = _generate_batch(model, tok, c, n)
    return {"streams": streams, "peak_rss_bytes": _peak_rss()}


def _generate_batch(model: Any, tok: Any, c: int, n: int) -> dict[str, Any]:
    """transformers' continuous batching over ``c`` prompts, ``n`` new tokens each."""
    from transformers import GenerationConfig

    # generate_batch manages its own grad mode (it fails inside inference_mode).
    inputs = [tok.encode(PROMPTS[i % len(PROMPTS)]).ids for i in range(c)]
    config = GenerationConfig(
        max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None
    )
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=inputs, generation_config=config)
    elapsed = time.perf_counter() - start
    errors = sorted({o.error for o in outputs.values() if o.error})
    if errors:
        raise RuntimeError(f"transformers generate_batch failed: {errors}")
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    return {"tok_s": round(generated / elapsed, 1), "tokens": generated, "api": "generate_batch"}


def main() -> None:
    spec = json.loads(sys.argv[1])
    side = rt_side if spec["side"] == "rt" else transformers_side
    print(json.dumps(side(spec)))


if __name__ == "__main__":
    main()
