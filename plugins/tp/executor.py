"""Who runs a step for the engine loop: rank 0 in this process, or rank 0's own process.

The engine loop (``llm_engine.py``) schedules, then hands each step to an executor,
which sends it to the other ranks, runs rank 0's shard of the forward pass and samples:
one call, ``execute(step) -> (token ids, logprobs, prompt logprobs)``.

* :class:`LocalExecutor`: rank 0 is the driver process (``parallel.rank0 = "driver"``).
* :class:`RemoteExecutor`: rank 0 runs in a process of its own (``parallel.rank0 =
  "process"``), which wraps a ``LocalExecutor`` (:func:`serve_driver`) and answers each
  step over a pipe. The driver then never imports torch: its HTTP server, tokenizer,
  scheduler and detokenizer share no interpreter lock with the model, and at startup
  they run while rank 0 imports torch. Each step costs two pipe messages (pickled step
  metadata out, token ids back), tens of microseconds against a decode step's tens of
  milliseconds.

This module imports no torch; ``LocalExecutor`` gets its runner and sampler built.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any, Protocol

import attrs
from rt.core.channel import ControlMessage, MetadataChannel
from rt.core.step import StepMetadata
from rt.plugins.tp.engine.sequence import PromptLogprobs, SamplerExtras

SHUTDOWN = ControlMessage("shutdown")
HEARTBEAT = ControlMessage("heartbeat")
Extras = dict[int, SamplerExtras]  # by sequence id
# what a step gives back: sampled token ids, their logprobs, prompt logprobs (or None)
StepOutput = tuple[list[int], list[Any], PromptLogprobs | None]


@attrs.frozen
class StepWithExtras:
    """A step and its sampler extras (see ``StepExecutor.execute``): driver to rank 0."""

    step: StepMetadata
    extras: Extras


@attrs.frozen
class EngineInfo:
    """What the driver's engine needs to know about the model rank 0 loaded."""

    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    num_blocks: int
    block_size: int


class StepExecutor(Protocol):
    """What the engine loop needs from whoever runs its steps."""

    vocab_size: int  # prompt token ids must be below it
    has_worker_processes: bool  # a failed step may mean a process died

    def bind_thread(self) -> None:
        """Called first in the engine loop's thread."""

    def execute(self, step: StepMetadata, extras: Extras | None = None) -> StepOutput:
        """Run ``step`` on every rank; the sampled token ids and their logprobs, one per
        sequence that samples this step, in step order, and the prompt logprobs the
        step scored (None: no request asked). ``extras``: what rank 0 needs for some
        sequences beyond the step (penalties, ``logit_bias``, ``min_tokens``, a prompt
        chunk's next token), by sequence id; the other ranks never see it."""

    def drain_events(self) -> list[dict]:
        """Timeline spans (``Span.to_dict()``) rank 0 recorded since the last call: a
        background compile and the switch to the compiled step, lazy CUDA-graph
        captures and drops."""

    def heartbeat(self) -> None:
        """Tell the ranks the driver is alive but idle: their wait for the next step
        starts again, so no timeout fires however long the server is idle."""

    def shutdown(self) -> None:
        """Tell the ranks to stop (after the last step)."""


class LocalExecutor:
    """Rank 0's share of each step, run in the calling thread."""

    def __init__(self, runner: Any, sampler: Any, channel: MetadataChannel | None) -> None:
        self.runner = runner
        self.sampler = sampler
        self.channel = channel
        self.vocab_size: int = runner.model_config.vocab_size
        # A failed step may mean a rank died: the worker monitor names it.
        self.has_worker_processes = runner.ctx.world_size > 1

    def bind_thread(self) -> None:
        self.runner.bind_compute_thread()

    def execute(self, step: StepMetadata, extras: Extras | None = None) -> StepOutput:
        if self.channel is not None:
            self.channel.send(step)
        logits = self.runner.run(step)
        next_tokens = {}
        if extras:
            next_tokens = {
                s: e.next_prompt_token for s, e in extras.items() if e.next_prompt_token >= 0
            }
        prompt = self.runner.prompt_logprobs(step, next_tokens)
        params, num_generated = step.sampled_params()
        if not params:
            return [], [], prompt
        rows = None
        if extras:
            sampled = (s for s, flag in zip(step.seq_ids, step.sample, strict=True) if flag)
            rows = [extras.get(seq_id) for seq_id in sampled]
        result = self.sampler.sample(logits, params, num_generated, rows)
        return result.token_ids, result.logprobs, prompt

    def drain_events(self) -> list[dict]:
        return self.runner.compiled.drain_events()

    def heartbeat(self) -> None:
        if self.channel is not None:
            self.channel.send(HEARTBEAT)

    def shutdown(self) -> None:
        if self.channel is not None:
            self.channel.send(SHUTDOWN)


class RemoteExecutor:
    """Steps go to rank 0's process over ``conn``; the answers come back on it."""

    has_worker_processes = True

    def __init__(self, conn: Connection, info: EngineInfo) -> None:
        self.conn = conn
        self.vocab_size = info.vocab_size
        self.events: list[dict] = []

    def bind_thread(self) -> None:
        pass  # the model's threads live in rank 0's process

    def execute(self, step: StepMetadata, extras: Extras | None = None) -> StepOutput:
        self.conn.send(StepWithExtras(step, extras) if extras else step)
        reply = self.conn.recv()  # EOFError when rank 0 is gone
        if reply[0] == "error":
            raise RuntimeError(f"rank 0: {reply[1]}")
        self.events.extend(reply[4])
        return reply[1], reply[2], reply[3]

    def drain_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    def heartbeat(self) -> None:
        self.conn.send(HEARTBEAT)  # rank 0 passes it on; no reply

    def shutdown(self) -> None:
        self.conn.send(SHUTDOWN)


def serve_driver(conn: Connection, executor: LocalExecutor) -> None:
    """Rank 0's loop when it has a process of its own: answer every step the driver
    sends until it says ``shutdown`` (passed on to the other ranks) or goes away."""
    executor.bind_thread()
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the driver is gone; the other ranks die with their parent
            return
        if isinstance(message, StepMetadata | StepWithExtras):
            plain = isinstance(message, StepMetadata)
            step, extras = (message, None) if plain else (message.step, message.extras)
            try:
                tokens, logprobs, prompt = executor.execute(step, extras)
            except Exception as e:
                conn.send(("error", f"{type(e).__name__}: {e}"))
                raise
            conn.send(("ok", tokens, logprobs, prompt, executor.drain_events()))
        elif isinstance(message, ControlMessage) and message.kind == "heartbeat":
            executor.heartbeat()
        elif isinstance(message, ControlMessage) and message.kind == "shutdown":
            executor.shutdown()
            return
