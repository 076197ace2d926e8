"""Assemble the driver's engine from what the startup stages produced."""

from __future__ import annotations

from typing import Any

from rt.plugins.tp.engine.block_manager import BlockManager
from rt.plugins.tp.engine.sampler import Sampler
from rt.plugins.tp.engine.scheduler import Scheduler
from rt.plugins.tp.llm_engine import LLMEngine


def build_engine(config: Any, runtime: Any) -> LLMEngine:
    runner = runtime.result("load-weights")
    kv = runtime.result("kv-cache")
    tokenizer = runtime.result("tokenizer")
    model_len = runner.model_config.max_model_len
    max_model_len = min(config.model.max_model_len or model_len, model_len)
    sched = config.scheduler
    scheduler = Scheduler(
        BlockManager(kv.num_blocks, kv.block_size),
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=max(sched.max_num_batched_tokens, sched.max_num_seqs),
        max_model_len=max_model_len,
        eos_token_ids=tokenizer.eos_token_ids or runner.model_config.eos_token_ids,
    )
    return LLMEngine(
        runner=runner,
        sampler=Sampler(),
        scheduler=scheduler,
        tokenizer=tokenizer,
        model_name=runtime.result("model").name,
        channel=runtime.results.get("metadata-broadcast"),
    )
