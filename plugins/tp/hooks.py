"""Built-in plugin ``tp``: the tensor-parallel engine's startup hooks.

This module is what the ``tp`` entry point names. It imports nothing heavy at
import time (``rt plugins`` loads it); torch and the engine modules are imported
inside the hooks, on the stage threads.

The driver resolves the model, spawns the worker ranks (see ``workers.py``) and owns
the engine loop. Rank 0 runs in the driver and loads its shard beside the others,
or, with ``parallel.rank0 = "process"``, in a worker process of its own.
"""

from __future__ import annotations

from typing import Any

import attrs
from rt.core import hookimpl, note
from rt.core.errors import ConfigError

# The command line's hooks live beside this module; pluggy finds them here too.
from rt.plugins.tp.cli_options import rt_add_options, rt_register_commands  # noqa: F401
from rt.plugins.tp.resident import rt_resident_preload  # noqa: F401

WARMUP_TIMEOUT_S = 600


@hookimpl(trylast=True)
def rt_resolve_model(config: Any) -> Any:
    from rt.plugins.tp.model_source import resolve_model

    m = config.model
    resolved = resolve_model(m.source, m.revision, m.download_dir, m.allow_download)
    note("model", resolved.name)
    return resolved


@hookimpl(trylast=True)
def rt_load_tokenizer(runtime: Any) -> Any:
    from rt.plugins.tp.resident import resident_tokenizer
    from rt.plugins.tp.tokenizer import Tokenizer

    folder = runtime.result("model").path
    tokenizer = resident_tokenizer(folder)
    if tokenizer is not None:
        note("loaded", "by the resident process this one was forked from")
        return tokenizer
    tokenizer = Tokenizer.from_dir(folder)
    tokenizer.compile_chat_template()
    return tokenizer


@attrs.frozen
class TPWorkers:
    """What the workers stage produced: the TP size, rank 0's device (None when rank 0
    runs in its own process), the worker ranks started here."""

    world_size: int
    device: str | None
    group: Any = None


@hookimpl(trylast=True)
def rt_start_workers(config: Any, runtime: Any) -> Any:
    from rt.plugins.tp.model_config import ModelConfig
    from rt.plugins.tp.rank_main import RankSpec
    from rt.plugins.tp.workers import WorkerGroup

    tp = config.parallel.tp
    model = runtime.result("model")
    ModelConfig.from_dir(model.path).check_tp(tp)  # fail before spawning anything
    # parallel.rank0 = "process": rank 0 is a worker too, and this process never
    # imports torch (it serves HTTP, tokenizes, schedules).
    rank0_here = config.parallel.rank0 == "driver"
    # One GPU per rank on this node: refuse before any rank starts (each rank checks
    # again). Without torch when rank 0 runs in its own process (device_plan.py).
    from rt.plugins.tp.device_plan import check_gpus_for_ranks

    local = config.parallel.ranks_on_this_node
    check_gpus_for_ranks(local, config.parallel.device, use_torch=rank0_here)
    device = None
    if rank0_here:
        import torch
        from rt.plugins.tp.distributed import pick_device

        device = pick_device(0, config.parallel.device, local_rank=0)
        runtime.services["device"] = device
        # Only the engine's step loop runs torch on several threads (bind_compute_thread).
        torch.set_num_threads(1)
        if tp == 1:
            note("ranks", 1)
            return TPWorkers(world_size=1, device=str(device))
    local = config.parallel.local_ranks or tp
    if local > tp:
        raise ConfigError(f"parallel.local_ranks={local} is more than parallel.tp={tp}")
    if local < tp and not config.parallel.master_port:
        raise ConfigError(
            f"ranks {local}..{tp - 1} join from other nodes, so they need a known port: "
            "set parallel.master_port (and parallel.master_addr to this node's address)"
        )
    # Rank 0 serves the rendezvous store on a socket that listens before any rank
    # starts, so no rank's first connection is refused (see init_distributed).
    listener = _store_listener(config) if tp > 1 else None
    port = listener.getsockname()[1] if listener is not None else 0
    # Ranks load the folder this stage resolved, never re-resolve a hub id themselves.
    rank_config = attrs.evolve(config, model=attrs.evolve(config.model, source=str(model.path)))
    specs = [
        RankSpec(r, tp, config.parallel.master_addr, port, rank_config, runtime.selection)
        for r in range(1 if rank0_here else 0, local)
    ]
    try:
        group = WorkerGroup.start(specs, store_listener=None if rank0_here else listener)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    if listener is not None and not rank0_here:
        listener.close()  # rank 0's process holds its own copy
    runtime.services["workers"] = group
    group.on_death(lambda reason: _on_rank_death(runtime, group, reason))
    if rank0_here:
        from rt.plugins.tp.distributed import init_distributed

        runtime.services["process_groups"] = init_distributed(
            0,
            tp,
            config.parallel.master_addr,
            port,
            config.parallel.backend,
            device,
            listener,
            config.parallel.collective_timeout_s,
        )
    else:
        note("rank0", "own process")
    note("ranks", tp)
    return TPWorkers(world_size=tp, device=device and str(device), group=group)


def _store_listener(config: Any) -> Any:
    """The listening socket rank 0 serves the rendezvous store on."""
    from rt.core.host import listening_socket

    addr, port = config.parallel.master_addr, config.parallel.master_port
    try:
        return listening_socket(addr, port)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on parallel.master_addr:master_port = {addr}:{port} for the "
            f"ranks' rendezvous ({e.strerror or e}); use an address of this node and a "
            "free port (master_port = 0 picks one when every rank runs here)"
        ) from None


def _on_rank_death(runtime: Any, group: Any, reason: str) -> None:
    from rt.core.errors import EngineDead

    engine = runtime.services.get("engine")
    if engine is not None:
        # Clients get one line; the rank's report (a traceback) is in the log.
        engine.fail(f"the engine died: {group.dead_summary}")
    else:
        runtime.abort_startup(EngineDead(reason))


def _parallel_context(config: Any, runtime: Any) -> Any:
    from rt.plugins.tp.parallel import ParallelContext

    device = runtime.services["device"]
    if runtime.world_size == 1:
        return ParallelContext.single(device)
    groups = runtime.services["process_groups"]
    collectives = None
    if config.parallel.shm_collectives:
        from rt.plugins.tp.shm_collectives import open_shm_collectives

        # The control group is idle until kv-cache, which needs this stage's result.
        collectives, how = open_shm_collectives(
            runtime.rank,
            runtime.world_size,
            device,
            groups["control"],
            timeout_s=config.parallel.collective_timeout_s,
        )
        note("collectives", how if collectives is not None else f"gloo: {how}")
    return ParallelContext(
        rank=runtime.rank,
        world_size=runtime.world_size,
        group=groups["world"],
        device=device,
        collectives=collectives,
    )


def _dtype(config: Any, device: Any, checkpoint_dtype: str) -> Any:
    """``model.dtype`` resolved for this rank (device_plan.resolve_dtype_name)."""
    import torch
    from rt.plugins.tp.device_plan import resolve_dtype_name

    return getattr(torch, resolve_dtype_name(config.model.dtype, checkpoint_dtype, device.type))


@hookimpl(trylast=True)
def rt_load_weights(config: Any, runtime: Any) -> Any:
    from rt.plugins.tp.cores import cores_shared
    from rt.plugins.tp.distributed import describe_device
    from rt.plugins.tp.model_config import ModelConfig
    from rt.plugins.tp.model_runner import ModelRunner
    from rt.plugins.tp.weights_plan import use_prepared_weights

    device = runtime.services["device"]
    note("device", describe_device(device))
    path = runtime.result("model").path if runtime.is_driver else config.model.source
    runner = ModelRunner(
        path,
        _parallel_context(config, runtime),
        _dtype(config, device, ModelConfig.from_dir(path).dtype),
        block_size=config.cache.block_size,
        quantization=config.model.quantization,
        compile_sizes=config.compile.batch_sizes,
    )
    use_prepared, why_not = use_prepared_weights(config.model.prepared_cache, device.type)
    if why_not is not None:
        note("prepared_weights", why_not)
    note("from", runner.load_weights(use_prepared=use_prepared))
    note("quantization", runner.describe_quantization())
    note("layout", runner.layout.describe())
    shared = cores_shared(device.type, config.parallel.ranks_on_this_node)
    if shared:
        note("cores", shared)
    note("param_bytes", runner.param_bytes())
    note("dtype", str(runner.dtype).removeprefix("torch."))
    return runner


@attrs.frozen
class KVCacheInfo:
    num_blocks: int
    block_size: int
    bytes: int


@hookimpl(trylast=True)
def rt_allocate_kv_cache(config: Any, runtime: Any) -> KVCacheInfo:
    import torch
    from rt.plugins.tp.memory_profile import kv_cache_budget
    from rt.plugins.tp.p2p_apply import configure_nccl_p2p

    runner = runtime.result("load-weights")
    configure_nccl_p2p(config, runtime)  # before NCCL's first collective: the profiling prefill
    # on CUDA: profiling forwards first (memory_profile.py), which also build the
    # Triton KV store's kernel
    budget, notes = kv_cache_budget(config, runner)
    for key, value in notes.items():
        note(key, value)
    num_blocks = runner.kv_spec.num_blocks_for_budget(budget)
    if runtime.world_size > 1:
        # Every rank must hold the same number of blocks: agree on the smallest.
        import torch.distributed as dist

        n = torch.tensor([num_blocks], dtype=torch.long)
        dist.all_reduce(
            n, op=dist.ReduceOp.MIN, group=runtime.services["process_groups"]["control"]
        )
        num_blocks = int(n.item())
    runner.allocate_kv_cache(num_blocks)
    info = KVCacheInfo(num_blocks, runner.block_size, num_blocks * runner.kv_bytes_per_block())
    note("blocks", num_blocks)
    note("bytes", info.bytes)
    if runner.device.type == "cuda":
        from rt.plugins.tp.layers import kv_store

        spec = runner.kv_spec
        note(
            "kv_store", kv_store.probe(runner.device, spec.num_kv_heads, spec.head_dim, spec.dtype)
        )
    return info


@hookimpl
def rt_warmup(config: Any, runtime: Any) -> Any:
    from rt.core.engine import GenerationRequest, generate_blocking
    from rt.core.step import SamplingParams
    from rt.plugins.tp.engine_factory import build_engine

    workers = runtime.services.get("workers")
    if workers is not None:
        runtime.timeline.add(workers.wait_ready(timeout=WARMUP_TIMEOUT_S))
    engine = build_engine(config, runtime)
    prompt = engine.tokenizer.encode("Hello")[:4] or [0]
    request = GenerationRequest(
        "warmup",
        prompt_token_ids=tuple(prompt),
        sampling=SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True),
    )
    out = generate_blocking(engine, request, timeout=WARMUP_TIMEOUT_S)
    if out.error:
        raise RuntimeError(f"warm-up request failed: {out.error}")
    runtime.services["engine"] = engine
    note("tokens", len(out.token_ids))
    _note_kv_store_fallback()
    return "engine"


def _note_kv_store_fallback() -> None:
    """The Triton KV store may first fail in a step (a new shape): say so here too."""
    import sys

    kv_store = sys.modules.get("rt.plugins.tp.layers.kv_store")  # not loaded: no torch here
    if kv_store is not None and kv_store.RECORD.fallback is not None:
        note("kv_store", kv_store.RECORD.describe())


@hookimpl
def rt_shutdown(runtime: Any) -> None:
    runner = runtime.results.get("load-weights")
    if runner is not None and runner.save_thread is not None:
        runner.save_thread.join()  # a short run still leaves the prepared weights behind
    engine = runtime.services.get("engine")
    if engine is not None:
        engine.shutdown()
    workers = runtime.services.get("workers")
    if workers is not None:
        workers.stop()
    if runtime.services.get("process_groups") is not None:
        from rt.plugins.tp.distributed import destroy_distributed

        destroy_distributed()
