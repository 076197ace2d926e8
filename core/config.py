"""The configuration tree: frozen attrs classes with validators.

Every field is settable from a profile, ``--config FILE``, ``RT_SECTION__KEY``
environment variables and ``--set section.key=value`` (see
:mod:`rt.core.config_loader` for precedence). ``docs/config.md`` lists them.
"""

from __future__ import annotations

import re

import attrs
from attrs.validators import ge, gt, in_, instance_of, optional

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """``"1GiB"`` -> 1073741824, ``"512MB"`` -> 512000000, ``"4096"`` -> 4096."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 512MiB, 2GiB)")
    number, prefix, binary = float(m.group(1)), m.group(2), m.group(3)
    factor = 1 if not prefix else (1024 if binary else 1000) ** ("kmgt".index(prefix.lower()) + 1)
    return int(number * factor)


def _memory(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value != "auto":
        parse_bytes(value)


@attrs.frozen
class ModelConfig:
    source: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    revision: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    download_dir: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    # A hub id missing from the local cache is downloaded unless this is true (or
    # HF_HUB_OFFLINE=1, the hub's own switch); `--offline` sets it.
    offline: bool = attrs.field(default=False, validator=instance_of(bool))
    dtype: str = attrs.field(
        default="auto", validator=in_(("auto", "float32", "bfloat16", "float16"))
    )
    max_model_len: int | None = attrs.field(default=None, validator=optional(gt(0)))
    # Weight-only int4 on CPU ranks: "auto" uses it for checkpoints converted from Q4_1
    # GGUF (the default model), "int4" for any, "none" never (plugins/tp/layers/int4.py).
    quantization: str = attrs.field(default="auto", validator=in_(("auto", "none", "int4")))
    # Save each rank's loaded weights in rt's cache and map them on later starts.
    prepared_cache: bool = attrs.field(default=True, validator=instance_of(bool))

    @property
    def allow_download(self) -> bool:
        """What ``resolve_model`` takes; the environment's HF_HUB_OFFLINE is checked there."""
        return not self.offline


@attrs.frozen
class ParallelConfig:
    tp: int = attrs.field(default=1, validator=[instance_of(int), ge(1)])
    backend: str = attrs.field(default="auto", validator=in_(("auto", "gloo", "nccl")))
    master_addr: str = attrs.field(default="127.0.0.1", validator=instance_of(str))
    master_port: int = attrs.field(default=0, validator=[instance_of(int), ge(0)])
    # Ranks the driver starts on its own node (None: all of them). The others join
    # from other nodes with `rt worker`; see docs/architecture.md.
    local_ranks: int | None = attrs.field(default=None, validator=optional(gt(0)))
    # All-reduce / all-gather through shared memory when every rank is a CPU rank on
    # this node (plugins/tp/shm_collectives.py); false: the gloo group's collectives.
    shm_collectives: bool = attrs.field(default=True, validator=instance_of(bool))
    # Where rank 0 runs: "driver" (in the serving process: no extra hop, no extra
    # process) or "process" (its own process, so the driver, which serves HTTP,
    # tokenizes and schedules, never imports torch and its work overlaps the import).
    rank0: str = attrs.field(default="driver", validator=in_(("driver", "process")))
    # How long a collective (a step's all-reduce, the metadata broadcast) may wait for
    # the other ranks before it fails. An idle server is never near it: the engine
    # sends the ranks a heartbeat well within it (plugins/tp/llm_engine.py).
    collective_timeout_s: float = attrs.field(default=120.0, validator=[gt(0.0)])
    # Where the ranks run: "auto" (CUDA when torch finds a usable device, else CPU),
    # "cpu" or "cuda" (an error when there is none). Each rank on a node takes its own
    # GPU: more ranks on a node than visible GPUs is an error (plugins/tp/distributed.py).
    device: str = attrs.field(default="auto", validator=in_(("auto", "cpu", "cuda")))

    @property
    def ranks_on_this_node(self) -> int:
        """How many ranks run on the driver's node: ``local_ranks``, at most ``tp``."""
        return min(self.local_ranks or self.tp, self.tp)


@attrs.frozen
class StartupConfig:
    sequential: bool = attrs.field(default=False, validator=instance_of(bool))
    trace: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    print_timeline: bool = attrs.field(default=True, validator=instance_of(bool))


@attrs.frozen
class PreloadConfig:
    import_modules: bool = attrs.field(default=True, validator=instance_of(bool))
    torch_libraries: bool = attrs.field(default=True, validator=instance_of(bool))
    forkserver: bool = attrs.field(default=True, validator=instance_of(bool))
    prefetch: bool = attrs.field(default=True, validator=instance_of(bool))
    prefetch_max_fraction: float = attrs.field(default=0.5, validator=[ge(0.0)])


@attrs.frozen
class CompileConfig:
    mode: str = attrs.field(default="off", validator=in_(("off", "default", "background")))
    cache_dir: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    # Steps of up to the largest size run padded to the next size, one static graph
    # each; larger steps share one dynamic graph (docs/compile.md: each graph costs
    # compile time, and on CPU the dynamic one decodes as fast as static ones)
    batch_sizes: tuple[int, ...] = attrs.field(
        default=(1,),
        converter=tuple,
        validator=attrs.validators.deep_iterable(gt(0)),
    )


@attrs.frozen
class GraphsConfig:
    mode: str = attrs.field(default="lazy", validator=in_(("off", "eager", "lazy")))
    capture_sizes: tuple[int, ...] = attrs.field(
        default=(1, 2, 4, 8, 16, 32),
        converter=tuple,
        validator=attrs.validators.deep_iterable(gt(0)),
    )


@attrs.frozen
class P2PConfig:
    mode: str = attrs.field(default="cached", validator=in_(("check", "cached", "table", "off")))


def _fraction_below_one(instance: object, attribute: attrs.Attribute, value: float) -> None:
    # 1.0 (or more) leaves nothing for the CUDA context, NCCL and the allocator's slack
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{attribute.name} is the share of the GPU's memory rt may use: it must be "
            f"above 0 and below 1 (e.g. 0.85), got {value!r}"
        )


@attrs.frozen
class CacheConfig:
    memory: str = attrs.field(default="auto", validator=_memory)
    # The share of each GPU's total memory the rank may fill: weights, activations,
    # CUDA graphs and the KV cache together (plugins/tp/memory_profile.py).
    gpu_memory_fraction: float = attrs.field(default=0.85, validator=_fraction_below_one)
    block_size: int = attrs.field(default=16, validator=[instance_of(int), gt(0)])


@attrs.frozen
class SchedulerConfig:
    max_num_seqs: int = attrs.field(default=64, validator=[instance_of(int), gt(0)])
    max_num_batched_tokens: int = attrs.field(default=4096, validator=[instance_of(int), gt(0)])


@attrs.frozen
class ServerConfig:
    host: str = attrs.field(default="127.0.0.1", validator=instance_of(str))
    port: int = attrs.field(default=8000, validator=[instance_of(int), ge(0)])
    api_key: str | None = attrs.field(default=None, validator=optional(instance_of(str)))
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=[instance_of(int), gt(0)])
    # A request's whole body must arrive within this long, or 408 and the connection
    # closes (a client that stops mid-body would otherwise hold it forever).
    body_timeout_s: float = attrs.field(default=30.0, validator=[gt(0.0)])
    # A connection's request line and headers must arrive within this long of its
    # accept, and an idle keep-alive connection is closed after it (Hypercorn's
    # keep_alive_timeout, one timer for both). Hypercorn's 5 s closed some of a burst of
    # 400 connections unread while the ranks kept both cores of a small machine busy.
    keep_alive_timeout_s: float = attrs.field(default=30.0, validator=[gt(0.0)])
    # Generation requests admitted at once (from their parsed body until the engine is
    # done with them); past it, 429 at once: a queue that grows without bound only makes
    # every client wait longer, and holds each waiting prompt in memory.
    max_concurrent_requests: int = attrs.field(default=1024, validator=[instance_of(int), gt(0)])
    shutdown_grace_s: float = attrs.field(default=10.0, validator=[ge(0.0)])
    # A dead engine (a rank died) never comes back: exit non-zero so a supervisor
    # restarts the server. false keeps it up, answering 503, for inspection.
    exit_on_engine_death: bool = attrs.field(default=True, validator=instance_of(bool))


@attrs.frozen
class ZygoteConfig:
    # "auto": `rt serve` / `rt generate` fork their rank processes from this user's
    # zygote for RT_CACHE_DIR (`rt zygote start`) when one answers and is current, else
    # start them as without one; "off" (`--no-zygote`): never ask one.
    use: str = attrs.field(default="auto", validator=in_(("auto", "off")))


@attrs.frozen
class Config:
    """The whole resolved configuration of one runtime. ``plugins`` is the plugin
    selection spec (names and ``no:NAME`` blocks) accumulated over all sources."""

    plugins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    model: ModelConfig = ModelConfig()
    parallel: ParallelConfig = ParallelConfig()
    startup: StartupConfig = StartupConfig()
    preload: PreloadConfig = PreloadConfig()
    compile: CompileConfig = CompileConfig()
    graphs: GraphsConfig = GraphsConfig()
    p2p: P2PConfig = P2PConfig()
    cache: CacheConfig = CacheConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    server: ServerConfig = ServerConfig()
    zygote: ZygoteConfig = ZygoteConfig()


SECTIONS: dict[str, type] = {
    f.name: type(f.default) for f in attrs.fields(Config) if f.name != "plugins"
}


def to_dict(config: Config) -> dict[str, object]:
    """The config as plain data (tuples become lists), for JSON and TOML."""
    return attrs.asdict(config)
