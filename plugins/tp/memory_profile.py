"""The KV cache's share of a GPU, from memory measured after loading.

Free memory after loading is not what the cache may take: every step needs room for
its activations, and each captured CUDA graph keeps a memory pool of its own. Before
the kv-cache stage sizes the cache it runs, on a two-block scratch cache:

* a **prefill** of ``scheduler.max_num_batched_tokens`` tokens (the largest step the
  scheduler builds; prompts no longer than the model allows): its peak above the
  memory held before it is the activation peak;
* when CUDA graphs will be captured, a **decode** at the largest ``graphs.capture_sizes``
  size over the context a captured step gathers (``rt.core.graphs.
  decode_context_width``): the graphs' pool holds about one such forward.

Then ``budget = gpu_memory_fraction * total - in use after loading - activation peak
- graph reserve``. "In use" is read from the device (``mem_get_info``) after the
forwards, so it counts what torch's allocator does not see: the CUDA context, NCCL's
buffers (created by the first collective, which the prefill runs) and other processes.
Every rank runs the same forwards in the same order: their all-reduces meet.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from rt.core.errors import ConfigError

# The scratch cache: block 0 stays zero (attention reads it for padded slots) and every
# profiled token's K/V lands in block 1 (a fresh prefill never reads the cache back).
SCRATCH_BLOCKS = 2
SCRATCH_BLOCK = 1


@attrs.frozen
class GpuMemory:
    """One rank's GPU memory, in bytes, as the kv-cache stage measured it."""

    total: int  # the device's memory
    in_use: int  # used on the device after loading and profiling, with nothing cached
    activation_peak: int  # the largest step's activations above what loading holds
    graph_reserve: int  # CUDA graphs' pool: one decode forward at the largest size (0: off)

    def notes(self) -> dict[str, int]:
        return {
            "gpu_total": self.total,
            "in_use_after_load": self.in_use,
            "activation_peak": self.activation_peak,
            "graph_reserve": self.graph_reserve,
        }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def gpu_kv_budget(memory: GpuMemory, fraction: float, bytes_per_block: int) -> int:
    """Bytes the KV cache may take on this GPU; ConfigError, naming every figure and
    what to change, when that leaves no block.

    Example: 80 GiB total, fraction 0.85, 20 GiB in use, 3 GiB of activations and
    1 GiB of graphs leave 0.85 * 80 - 24 = 44 GiB.
    """
    allowed = int(memory.total * fraction)
    budget = allowed - memory.in_use - memory.activation_peak - memory.graph_reserve
    if budget >= bytes_per_block:
        return budget
    raise ConfigError(
        f"no room for the KV cache on this GPU: cache.gpu_memory_fraction={fraction} of "
        f"{_gib(memory.total)} is {_gib(allowed)}, of which {_gib(memory.in_use)} is in use "
        f"after loading, the largest step needs {_gib(memory.activation_peak)} of "
        f"activations and CUDA graphs {_gib(memory.graph_reserve)}; that leaves "
        f"{_gib(max(budget, 0))}, less than one {bytes_per_block}-byte block. Raise "
        "cache.gpu_memory_fraction (below 1), lower scheduler.max_num_batched_tokens or "
        "scheduler.max_num_seqs, capture smaller CUDA graphs (graphs.capture_sizes, or "
        "--graphs off), split the model over more GPUs (--tp), or use a smaller dtype"
    )


def _step(lengths: list[int], start_pos: int, block_size: int) -> Any:
    """A step of one sequence per entry of ``lengths`` (new tokens each, after
    ``start_pos`` cached ones), every block of every table the scratch block."""
    from rt.core.step import SeqStep, StepMetadata

    seqs = [
        SeqStep(
            seq_id=i,
            token_ids=(0,) * n,
            start_pos=start_pos,
            block_table=(SCRATCH_BLOCK,) * math.ceil((start_pos + n) / block_size),
        )
        for i, n in enumerate(lengths)
    ]
    return StepMetadata.from_seqs(0, seqs)


def prefill_lengths(tokens: int, max_len: int) -> list[int]:
    """``tokens`` split into prompts of at most ``max_len``: the largest prefill step."""
    full, rest = divmod(tokens, max_len)
    return [max_len] * full + ([rest] if rest else [])


def _forward(runner: Any, step: Any) -> None:
    """The eager forward ``runner.run`` makes of ``step``, with its logits."""
    import torch
    from rt.plugins.tp.layers.attention_metadata import as_long, build_attention_metadata

    meta = build_attention_metadata(step, runner.block_size, runner.device)
    ids = torch.zeros(step.num_tokens, dtype=torch.long, device=runner.device)
    hidden = runner.model(ids, meta.positions, meta)  # [T, H]
    last = (as_long(step.token_counts).cumsum(0) - 1).to(runner.device)  # [B]
    runner.model.compute_logits(hidden[last]).float()


def _peak(runner: Any, step: Any, base: int) -> int:
    import torch

    torch.cuda.reset_peak_memory_stats(runner.device)
    _forward(runner, step)
    torch.cuda.synchronize(runner.device)
    return torch.cuda.max_memory_allocated(runner.device) - base


def graph_context(runner: Any, graph_batch: int) -> int:
    """The keys per sequence a captured decode step of ``graph_batch`` rows gathers."""
    from rt.core.graphs import decode_context_width

    spec = runner.kv_spec
    bytes_per_token = spec.bytes_per_block // (spec.num_layers * spec.block_size)
    return decode_context_width(
        runner.model_config.max_model_len, runner.block_size, graph_batch, bytes_per_token
    )


def measure_gpu_memory(runner: Any, max_tokens: int, max_len: int, graph_batch: int) -> GpuMemory:
    """Run the profiling forwards on ``runner`` (loaded, on CUDA, no KV cache yet) and
    measure. ``max_len``: the longest prompt served; ``graph_batch``: the largest
    CUDA-graph batch size, 0 when no graphs will be captured. Leaves no cache bound."""
    import torch

    device = runner.device
    bs = runner.block_size
    with torch.cuda.device(device), torch.inference_mode():
        runner.allocate_kv_cache(SCRATCH_BLOCKS)
        runner.kv_cache.zero_()  # no NaN where a profiled decode reads
        try:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            prefill = _peak(runner, _step(prefill_lengths(max_tokens, max_len), 0, bs), base)
            graphs = 0
            if graph_batch:
                # each token decodes after context - 1 cached keys: context keys gathered
                context = graph_context(runner, graph_batch)
                graphs = _peak(runner, _step([1] * graph_batch, context - 1, bs), base)
        finally:
            runner.kv_cache = None
            for attn in runner.attention_layers:
                attn.unbind_cache()
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
    return GpuMemory(
        total=total,
        in_use=total - free,
        activation_peak=max(prefill, 0),
        graph_reserve=max(graphs, 0),
    )


def kv_cache_budget(config: Any, runner: Any) -> tuple[int, dict[str, Any]]:
    """The bytes this rank's KV cache may take, and what the timeline should note.

    ``cache.memory`` when set; else on CUDA measured (:func:`measure_gpu_memory`), on
    CPU 512 MiB, less where the node has less to spare. On CPU the budget of every rank
    of the node is checked against the memory available (host_memory.py).
    """
    from rt.core.config import parse_bytes

    configured = None if config.cache.memory == "auto" else parse_bytes(config.cache.memory)
    if runner.device.type != "cuda":
        from rt.plugins.tp.host_memory import available_memory, cpu_kv_budget

        local_ranks = config.parallel.ranks_on_this_node
        budget, source = cpu_kv_budget(configured, local_ranks, available_memory())
        return budget, {"budget_from": source}
    if configured is not None:
        return configured, {"budget_from": "cache.memory"}
    sched = config.scheduler
    max_len = min(config.model.max_model_len or runner.model_config.max_model_len,
                  runner.model_config.max_model_len)  # fmt: skip
    graphs = config.graphs
    memory = measure_gpu_memory(
        runner,
        # the engine runs at least one token per sequence (engine_factory.py)
        max_tokens=max(sched.max_num_batched_tokens, sched.max_num_seqs),
        max_len=max_len,
        graph_batch=max(graphs.capture_sizes, default=0) if graphs.mode != "off" else 0,
    )
    budget = gpu_kv_budget(memory, config.cache.gpu_memory_fraction, runner.kv_bytes_per_block())
    return budget, {"budget_from": "measured", **memory.notes(), "budget": budget}
