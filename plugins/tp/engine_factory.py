"""Assemble the driver's engine from what the startup stages produced.

With rank 0 in the driver, its runner, KV cache and channel are this process's stage
results; with rank 0 in its own process they are there, and rank 0's startup report
(an ``EngineInfo``) says what the scheduler needs to know.
"""

from __future__ import annotations

from typing import Any

from rt.core.timeline import Span
from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.scheduler import Scheduler
from rt.plugins.tp.executor import EngineInfo, LocalExecutor, RemoteExecutor, StepExecutor
from rt.plugins.tp.llm_engine import LLMEngine


def engine_info(runner: Any, kv: Any) -> EngineInfo:
    model = runner.model_config
    return EngineInfo(
        vocab_size=model.vocab_size,
        max_model_len=model.max_model_len,
        eos_token_ids=tuple(model.eos_token_ids),
        num_blocks=kv.num_blocks,
        block_size=kv.block_size,
    )


def local_executor(runner: Any, channel: Any) -> LocalExecutor:
    from rt.plugins.tp.engine.sampler import Sampler

    return LocalExecutor(runner, Sampler(), channel)


def build_engine(config: Any, runtime: Any) -> LLMEngine:
    workers = runtime.services.get("workers")
    if workers is not None and workers.rank0_conn is not None:
        info = workers.engine_info
        executor: StepExecutor = RemoteExecutor(workers.rank0_conn, info)
        others_wait = True
    else:
        runner = runtime.result("load-weights")
        info = engine_info(runner, runtime.result("kv-cache"))
        channel = runtime.results.get("metadata-broadcast")
        executor = local_executor(runner, channel)
        others_wait = channel is not None
    tokenizer = runtime.result("tokenizer")
    max_model_len = min(config.model.max_model_len or info.max_model_len, info.max_model_len)
    sched = config.scheduler
    scheduler = Scheduler(
        BlockManager(info.num_blocks, info.block_size),
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=max(sched.max_num_batched_tokens, sched.max_num_seqs),
        max_model_len=max_model_len,
        eos_token_ids=tokenizer.eos_token_ids or list(info.eos_token_ids),
    )
    return LLMEngine(
        executor=executor,
        scheduler=scheduler,
        tokenizer=tokenizer,
        model_name=runtime.result("model").name,
        # Four heartbeats per timeout: an idle rank's wait restarts long before it expires.
        heartbeat_s=config.parallel.collective_timeout_s / 4 if others_wait else None,
        on_events=lambda events: runtime.timeline.add([Span.from_dict(e) for e in events]),
    )
