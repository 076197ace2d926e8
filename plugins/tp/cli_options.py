"""The ``tp`` plugin's command line: the engine's options on every engine command, and
``rt worker`` (one rank joining a TP group from another node). Registered through
``hooks.py``, which the ``tp`` entry point names."""

from __future__ import annotations

import argparse
from typing import Any

import attrs
from rt.core import hookimpl
from rt.core.errors import ConfigError

ENGINE_COMMANDS = ("serve", "generate", "worker", "bench generate", "bench startup")


@hookimpl
def rt_add_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command not in ENGINE_COMMANDS:
        return
    group = parser.add_argument_group("model and engine")
    S = argparse.SUPPRESS
    group.add_argument(
        "--device",
        dest="parallel.device",
        default=S,
        choices=("auto", "cpu", "cuda"),
        help="where the ranks run (auto: CUDA when torch finds a GPU; one GPU per rank)",
    )
    group.add_argument(
        "--dtype",
        dest="model.dtype",
        default=S,
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights and activations dtype (auto: the checkpoint's; bfloat16 for a "
        "float32 checkpoint on CUDA)",
    )
    group.add_argument(
        "--quantization",
        dest="model.quantization",
        default=S,
        choices=("auto", "none", "int4"),
        help="weight-only int4 on CPU ranks (auto: for a checkpoint converted from Q4_1 GGUF)",
    )
    group.add_argument(
        "--revision", dest="model.revision", default=S, help="hub revision (branch, tag or commit)"
    )
    group.add_argument(
        "--download-dir",
        dest="model.download_dir",
        default=S,
        help="Hugging Face cache folder to resolve hub ids in",
    )
    group.add_argument(
        "--max-model-len",
        dest="model.max_model_len",
        type=int,
        default=S,
        help="longest prompt + output, in tokens (default: the model's)",
    )
    group.add_argument(
        "--kv-cache-memory",
        dest="cache.memory",
        default=S,
        metavar="SIZE",
        help="KV cache budget, e.g. 512MiB (default: auto)",
    )


@hookimpl
def rt_register_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker", help="join a TP group as one rank, from another node (see docs/architecture.md)"
    )
    p.add_argument("model", nargs="?", default=None, help="the same model the driver serves")
    p.add_argument("--rank", type=int, required=True, help="this rank (1..tp-1)")
    p.add_argument("--tp", dest="parallel.tp", type=int, required=True, help="the TP size")
    p.add_argument("--master-addr", dest="parallel.master_addr", required=True)
    p.add_argument("--master-port", dest="parallel.master_port", type=int, required=True)
    p.set_defaults(handler=_worker_command)


def _worker_command(args: argparse.Namespace, cli: Any) -> int:
    from rt.plugins.tp.model_source import resolve_model
    from rt.plugins.tp.rank_main import RankSpec, rank_main

    extra = [("model.source", args.model, "MODEL")] if args.model else []
    config = cli.config(args, extra)
    p = config.parallel
    if not 0 < args.rank < p.tp:
        raise ConfigError(
            f"--rank {args.rank} is not a worker rank of --tp {p.tp}: use 1..{p.tp - 1}"
        )
    m = config.model
    model = resolve_model(m.source, m.revision, m.download_dir, m.allow_download)
    config = attrs.evolve(config, model=attrs.evolve(m, source=str(model.path)))
    rank_main(RankSpec(args.rank, p.tp, p.master_addr, p.master_port, config, cli.selection), None)
    return 0
