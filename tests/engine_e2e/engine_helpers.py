"""Start the real engine in-process (TP=1) through the real startup graph."""

from __future__ import annotations

import os
from pathlib import Path

from rt.core.discovery import discover
from rt.core.profile_registry import load_config
from rt.core.runtime import Runtime
from rt.core.selection import select
from rt.core.startup import create_runtime, run_startup


def start_runtime(model: Path | str, *settings: tuple[str, str]) -> Runtime:
    """Driver runtime without the frontend; ``settings`` are ``(key, value)`` overrides
    (``("plugins", "shm-broadcast")`` selects a plugin)."""
    cli = [("model.source", str(model), "test"), ("startup.print_timeline", "false", "test")]
    cli += [(k, v, "test") for k, v in settings]
    # nothing from the environment but the harness's device (tests/conftest.py)
    device = {k: v for k, v in os.environ.items() if k == "RT_PARALLEL__DEVICE"}
    config = load_config(environ=device, cli=cli)
    runtime = create_runtime(config, select(discover(), config.plugins), exclude=["frontend"])
    try:
        run_startup(runtime)
    except BaseException:
        runtime.shutdown()
        raise
    return runtime


def generate(engine, prompt, params, name: str = "r"):
    """One request's merged output (60 s at most)."""
    from rt.core.engine import GenerationRequest, generate_blocking

    request = GenerationRequest(name, prompt_token_ids=tuple(prompt), sampling=params)
    return generate_blocking(engine, request, 60)
