"""Built-in plugin ``generate``: ``rt generate [MODEL] PROMPT``.

It runs the same startup graph as ``rt serve`` minus the frontend, then sends one
request through the engine (only through the ``rt.core`` Engine protocol).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rt.core import RtError, UsageError, hookimpl
from rt.core.cli import add_startup_options
from rt.core.cli_context import CliContext

if TYPE_CHECKING:  # imported where used: not needed before rt_cli_start (see serve.py)
    from rt.core.engine import Engine
    from rt.core.step import SamplingParams


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate text for one prompt and exit")
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="model folder or hub id (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the model's chat template"
    )
    p.add_argument(
        "--json", action="store_true", help='print {"text", "token_ids", "finish_reason"}'
    )
    add_startup_options(p)
    p.set_defaults(handler=generate_command)


def utf8_argument(value: str, what: str) -> str:
    """``value`` if it is text; else a usage error naming the byte that is not UTF-8 (a
    command line carries bytes, and Python keeps undecodable ones as lone surrogates,
    which no tokenizer takes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise UsageError(
            f"{what} is not valid UTF-8: {bad} at character {e.start} of {value!r}; pass UTF-8 text"
        ) from None
    return value


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    from rt.core.step import SamplingParams

    for stop in args.stop:
        utf8_argument(stop, "--stop")
    try:
        return SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            max_tokens=args.max_tokens,
            stop=tuple(args.stop),
        )
    except (ValueError, TypeError) as e:
        raise UsageError(f"bad sampling option: {e}") from None


def engine_of(runtime: Any) -> Engine:
    engine = runtime.services.get("engine")
    if engine is None:
        raise RtError(
            "startup finished but no plugin published an engine (runtime.services['engine'])"
        )
    return engine


def generate_command(args: argparse.Namespace, cli: CliContext) -> int:
    import uuid

    from rt.core.engine import GenerationRequest, generate_blocking
    from rt.core.startup import report_startup, run_startup

    utf8_argument(args.prompt, "the prompt")
    sampling = sampling_from_args(args)
    extra = [("model.source", args.model, "MODEL")] if args.model else []
    config = cli.config(args, extra)
    runtime = cli.create_runtime(config, exclude=["frontend"])
    try:
        try:
            run_startup(runtime)
        finally:
            report_startup(runtime)
        engine = engine_of(runtime)
        if args.chat:
            text = engine.apply_chat_template([{"role": "user", "content": args.prompt}])
            request = GenerationRequest(
                uuid.uuid4().hex,
                prompt_token_ids=tuple(engine.encode(text, add_special_tokens=False)),
                sampling=sampling,
            )
        else:
            request = GenerationRequest(uuid.uuid4().hex, prompt=args.prompt, sampling=sampling)
        out = generate_blocking(engine, request)
        if out.error:
            raise RtError(out.error)
        if args.json:
            print(
                json.dumps(
                    {
                        "text": out.text,
                        "token_ids": list(out.token_ids),
                        "finish_reason": out.finish_reason,
                    }
                )
            )
        else:
            sys.stdout.write(out.text + "\n")
        return 0
    finally:
        runtime.shutdown()
