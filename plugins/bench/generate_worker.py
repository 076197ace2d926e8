"""Child process of ``rt bench generate``: measures one side and prints JSON."""

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


def _timed(engine: Any, request: Any) -> tuple[float, float, int]:
    """(seconds to the last token, seconds to the first, tokens produced) of one request."""
    first: list[float] = []
    outputs: list[Any] = []
    done = threading.Event()

    def on_output(output: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        outputs.append(output)
        if output.finished:
            done.set()

    start = time.perf_counter()
    engine.submit(request, on_output)
    done.wait()
    elapsed = time.perf_counter() - start
    _check_finished(outputs)
    return elapsed, first[0] - start, sum(len(o.token_ids) for o in outputs)


def _check_finished(outputs: list[Any]) -> None:
    """Raise (in the measuring thread: the engine's callback thread must not) if a request
    failed: a rate over a failed request's tokens is no figure."""
    failed = [o for o in outputs if o.finish_reason in ("error", "abort")]
    if failed:
        o = failed[0]
        raise RuntimeError(f"request {o.request_id} ended with {o.finish_reason}: {o.error}")


def measure(engine: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s of one stream (median of ``runs``) and of ``concurrency`` streams at once.

    Rates divide the tokens the engine produced, not the ``max_tokens`` asked for: a
    request that ends early (a stop token, an error) must not count as a full one."""
    from rt.core.engine import GenerationRequest
    from rt.core.step import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    single, ttfts, single_tokens = [], [], []
    for i in range(spec["runs"]):
        elapsed, ttft, produced = _timed(
            engine, GenerationRequest(f"single-{i}", prompt=PROMPTS[0], sampling=params)
        )
        single.append(produced / elapsed)
        ttfts.append(ttft)
        single_tokens.append(produced)
    c = spec["concurrency"]
    finished = threading.Semaphore(0)
    outputs: list[Any] = []  # list.append is atomic: callbacks may come from any thread

    def on_output(output: Any) -> None:
        outputs.append(output)
        if output.finished:
            finished.release()

    start = time.perf_counter()
    for i in range(c):
        req = GenerationRequest(f"conc-{i}", prompt=PROMPTS[i % len(PROMPTS)], sampling=params)
        engine.submit(req, on_output)
    for _ in range(c):
        finished.acquire()
    elapsed = time.perf_counter() - start
    _check_finished(outputs)
    produced = sum(len(o.token_ids) for o in outputs)
    return {
        "single_tok_s": round(statistics.median(single), 1),
        "single_tokens": single_tokens,
        "concurrent_tok_s": round(produced / elapsed, 1),
        "concurrent_tokens": produced,
        "ttft_s": round(statistics.median(ttfts), 4),
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
    config = load_config(None, None, None, pairs)
    runtime = create_runtime(config, select(discover(), config.plugins), exclude=["frontend"])
    run_startup(runtime)
    engine = runtime.services["engine"]
    figures = measure(engine, spec)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True)
    out = generate_blocking(engine, GenerationRequest("check", prompt=PROMPTS[0], sampling=params))
    result = {
        "model_name": runtime.result("model").name,
        "model_path": str(runtime.result("model").path),
        "dtype": str(runtime.result("load-weights").dtype).removeprefix("torch."),
        "quantization": runtime.result("load-weights").quantization,
        **figures,
        "peak_rss_bytes": _peak_rss(),
        "tokens_checked": len(out.token_ids),
    }
    runtime.shutdown()
    return result


def transformers_side(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = spec["model_path"]
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    # The same weights in the same dtype as rt ran them.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, spec["dtype"])).eval()
    n = spec["max_tokens"]
    ids = torch.tensor([tok.encode(PROMPTS[0]).ids])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up, as rt's warmup stage
        single = []
        for _ in range(spec["runs"]):
            start = time.perf_counter()
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            single.append((out.shape[1] - ids.shape[1]) / (time.perf_counter() - start))
    # generate_batch manages its own grad mode (it fails inside inference_mode).
    c = spec["concurrency"]
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
    return {
        "generate_tok_s": round(statistics.median(single), 1),
        "generate_batch_tok_s": round(generated / elapsed, 1),
        "generate_batch_tokens": generated,
        "peak_rss_bytes": _peak_rss(),
    }


def main() -> None:
    spec = json.loads(sys.argv[1])
    side = rt_side if spec["side"] == "rt" else transformers_side
    print(json.dumps(side(spec)))


if __name__ == "__main__":
    main()
