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


def _timed(engine: Any, request: Any) -> tuple[float, float]:
    """(seconds to the last token, seconds to the first) of one request."""
    first: list[float] = []
    done = threading.Event()

    def on_output(output: Any) -> None:
        if not first:
            first.append(time.perf_counter())
        if output.finished:
            done.set()

    start = time.perf_counter()
    engine.submit(request, on_output)
    done.wait()
    return time.perf_counter() - start, first[0] - start


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
    n = spec["max_tokens"]
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    single, ttfts = [], []
    for i in range(spec["runs"]):
        elapsed, ttft = _timed(
            engine, GenerationRequest(f"single-{i}", prompt=PROMPTS[0], sampling=params)
        )
        single.append(n / elapsed)
        ttfts.append(ttft)
    c = spec["concurrency"]
    finished = threading.Semaphore(0)
    start = time.perf_counter()
    for i in range(c):
        req = GenerationRequest(f"conc-{i}", prompt=PROMPTS[i % len(PROMPTS)], sampling=params)
        engine.submit(req, lambda o: finished.release() if o.finished else None)
    for _ in range(c):
        finished.acquire()
    concurrent = c * n / (time.perf_counter() - start)
    out = generate_blocking(engine, GenerationRequest("check", prompt=PROMPTS[0], sampling=params))
    result = {
        "model_name": runtime.result("model").name,
        "model_path": str(runtime.result("model").path),
        "dtype": str(runtime.result("load-weights").dtype).removeprefix("torch."),
        "quantization": runtime.result("load-weights").quantization,
        "single_tok_s": round(statistics.median(single), 1),
        "concurrent_tok_s": round(concurrent, 1),
        "ttft_s": round(statistics.median(ttfts), 4),
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
