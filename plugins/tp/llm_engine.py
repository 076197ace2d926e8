"""The driver's engine loop: the ``rt.core.engine.Engine`` the frontends call.

One thread owns the step executor (``executor.py``). Each iteration it asks the
scheduler for a step, has the executor run it (send it to the other ranks, run rank
0's share, sample: here, or in rank 0's own process), and turns new tokens into
text deltas (with stop strings) for each request's callback. Every scheduler access
holds ``_lock``, so ``submit`` can reject a request synchronously and ``abort`` frees
KV blocks at once; the model runs outside the lock.

Idle is not a fault: while nothing is scheduled the loop sends the other ranks a
heartbeat every ``heartbeat_s``, so their wait for the next step (a collective with a
timeout on the built-in channel) starts over and never expires, however long the
server sits idle. A rank that dies is noticed by the worker monitor, not by a timeout.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import attrs
from rt.core.engine import (
    EngineStats,
    GenerationOutput,
    GenerationRequest,
    OutputCallback,
)
from rt.core.errors import EngineDead, RequestError
from rt.plugins.tp.detokenizer import IncrementalDetokenizer, StopChecker
from rt.plugins.tp.engine.scheduler import Scheduler
from rt.plugins.tp.engine.sequence import Sequence as Seq
from rt.plugins.tp.executor import StepExecutor
from rt.plugins.tp.logprob_texts import logprob_texts, prompt_logprob_texts
from rt.plugins.tp.tokenizer import Tokenizer

log = logging.getLogger("rt.engine")
# How long a failed step waits for the worker monitor to name a dead rank (it reaps
# the process and reports its exit within milliseconds; this bounds a stuck monitor).
RANK_DEATH_GRACE_S = 2.0
SHUT_DOWN = "the engine was shut down"


@attrs.define(eq=False)
class _Active:
    request_id: str
    seq: Seq
    callback: OutputCallback
    detok: IncrementalDetokenizer
    stop: StopChecker
    sent_tokens: int = 0


class LLMEngine:
    def __init__(
        self,
        *,
        executor: StepExecutor,
        scheduler: Scheduler,
        tokenizer: Tokenizer,
        model_name: str,
        on_step: Callable[[], None] | None = None,
        heartbeat_s: float | None = None,
        on_events: Callable[[list[dict]], None] | None = None,
    ):
        self.executor = executor
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = scheduler.max_model_len
        self._on_step = on_step
        # Timeline spans the ranks report while serving (a background compile's switch)
        self._on_events = on_events
        self._heartbeat_s = heartbeat_s  # None: no other rank waits on us
        self._lock = threading.Condition()
        self._active: dict[int, _Active] = {}
        self._by_request: dict[str, int] = {}
        self._seq_ids = itertools.count()
        self._stopping = False
        # Why the engine died on its own (a rank died, a step failed): one line, no
        # internals, for clients; None while it serves and after a requested shutdown.
        self.dead_reason: str | None = None
        self._closed: str | None = None  # why submit refuses: death or shutdown
        self._failed = threading.Event()  # set once dead_reason is
        self._thread = threading.Thread(target=self._loop, name="rt-engine", daemon=True)
        self._thread.start()

    # -- Engine protocol -------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, token_ids: Sequence[int]) -> str:
        vocab = self.executor.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise RequestError(f"token ids must be in [0, {vocab})")
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt
        )

    def submit(self, request: GenerationRequest, on_output: OutputCallback) -> None:
        if request.prompt_token_ids is not None:
            prompt_ids = list(request.prompt_token_ids)
        elif request.prompt is not None:
            prompt_ids = self.tokenizer.encode(request.prompt)
        else:
            raise RequestError(f"request {request.request_id}: give a prompt or prompt token ids")
        vocab = self.executor.vocab_size
        if any(not 0 <= t < vocab for t in prompt_ids):
            raise RequestError(
                f"request {request.request_id}: prompt token ids must be in [0, {vocab})"
            )
        if any(t >= vocab for t, _ in request.sampling.logit_bias):
            raise RequestError(
                f"request {request.request_id}: logit_bias token ids must be in [0, {vocab})",
                param="logit_bias",
            )
        with self._lock:
            if self._closed is not None:
                raise EngineDead(f"the engine is not running: {self._closed}")
            if request.request_id in self._by_request:
                raise RequestError(f"request id {request.request_id!r} is already running")
            seq = Seq(next(self._seq_ids), prompt_ids, request.sampling)
            self.scheduler.add(seq)  # raises RequestError when it can never fit
            self._active[seq.seq_id] = _Active(
                request.request_id,
                seq,
                on_output,
                IncrementalDetokenizer(self.tokenizer, prompt_ids),
                StopChecker(request.sampling.stop),
            )
            self._by_request[request.request_id] = seq.seq_id
            self._lock.notify_all()

    def abort(self, request_id: str) -> None:
        with self._lock:
            seq_id = self._by_request.get(request_id)
            if seq_id is None:
                return
            self.scheduler.abort(seq_id)
            active = self._active.pop(seq_id)
            del self._by_request[request_id]
        self._deliver([(active.callback, self._final(active, "abort"))])

    def stats(self) -> EngineStats:
        with self._lock:
            bm = self.scheduler.block_manager
            return EngineStats(
                running=self.scheduler.num_running,
                waiting=self.scheduler.num_waiting,
                kv_blocks_used=bm.num_used_blocks,
                kv_blocks_free=bm.num_free_blocks,
                preemptions=self.scheduler.num_preemptions,
            )

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=30)
        self._close(self.dead_reason or SHUT_DOWN, died=False)
        if self.dead_reason is None:
            try:
                self.executor.shutdown()
            except Exception:  # ranks may be gone already
                log.debug("shutdown message not delivered", exc_info=True)

    def fail(self, reason: str) -> None:
        """The engine died: fail every request in flight with ``reason`` (one line, for
        clients; the details belong in the log) and refuse new ones, for good."""
        self._close(reason, died=True)

    def _close(self, reason: str, died: bool) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
            if died and self.dead_reason is None:
                self.dead_reason = reason
                self._failed.set()
            failed = list(self._active.values())
            self._active.clear()
            self._by_request.clear()
            self._lock.notify_all()
        self._deliver([(a.callback, self._final(a, "error", error=reason)) for a in failed])

    # -- the loop ----------------------------------------------------------------

    def _idle(self) -> bool:
        return not self._stopping and self._closed is None and not self.scheduler.has_unfinished

    def _loop(self) -> None:
        try:
            self.executor.bind_thread()
            last_sent = time.monotonic()  # when the ranks last heard from us
            while True:
                beat = False
                with self._lock:
                    while self._idle():
                        if self._heartbeat_s is None:
                            self._lock.wait()
                            continue
                        left = last_sent + self._heartbeat_s - time.monotonic()
                        if left <= 0:
                            beat = True
                            break
                        self._lock.wait(left)
                    if self._stopping or self._closed is not None:
                        return
                    step = None if beat else self.scheduler.schedule()
                    extras = None if step is None else self.scheduler.sampler_extras(step)
                if beat:
                    self.executor.heartbeat()
                    last_sent = time.monotonic()
                    continue
                if step is None:
                    continue
                tokens, logprobs, prompt = self.executor.execute(step, extras)
                last_sent = time.monotonic()
                events = self.executor.drain_events()
                if events and self._on_events is not None:
                    self._on_events(events)
                with self._lock:
                    outcome = self.scheduler.postprocess(step, tokens, logprobs, prompt)
                    deliveries, due = self._collect(
                        outcome.advanced, set(map(id, outcome.finished))
                    )
                self._deliver(self._with_prompt_logprobs(deliveries, due) if due else deliveries)
                if self._on_step is not None:
                    self._on_step()
        except BaseException as e:  # a rank died, or a bug: fail requests, never hang
            log.exception("engine loop stopped")
            if self.executor.has_worker_processes:
                # A collective with a dead rank fails before the worker monitor has
                # reaped that rank; give the monitor a moment to report the real cause
                # (which rank, how it exited) rather than gloo's "connection closed".
                self._failed.wait(RANK_DEATH_GRACE_S)
            # The exception's text can hold file paths (gloo's messages do): it is in
            # the log above; clients get its type.
            self.fail(f"an engine step failed ({type(e).__name__}); the server log has the details")

    def _collect(
        self, advanced: list[Seq], finished: set[int]
    ) -> tuple[list[tuple[OutputCallback, GenerationOutput]], list[tuple[int, Seq, list]]]:
        """The outputs of the sequences that advanced, and the prompt logprobs due with
        some of them: ``(index in outputs, sequence, raw values)``, turned into text by
        :meth:`_with_prompt_logprobs` once the lock is released (thousands of tokens'
        texts would keep ``submit`` waiting)."""
        out, due = [], []
        for seq in advanced:
            active = self._active.get(seq.seq_id)
            if active is None:
                continue
            token = seq.output_token_ids[-1]
            text = active.stop.add(active.detok.add(token))
            done = id(seq) in finished
            if active.stop.stopped and not done:
                self.scheduler.finish(seq.seq_id, "stop")
                done = True
            if done:
                if not active.stop.stopped:
                    text += active.stop.add(active.detok.finish()) + active.stop.finish()
                reason = "stop" if active.stop.stopped else (seq.finish_reason or "stop")
                del self._active[seq.seq_id]
                del self._by_request[active.request_id]
            if seq.prompt_logprobs is not None and seq.num_generated == 1:
                due.append((len(out), seq, seq.prompt_logprobs))
                seq.prompt_logprobs = None  # delivered (a recompute scores no prompt)
            output = GenerationOutput(
                request_id=active.request_id,
                text=text,
                token_ids=(token,),
                logprobs=logprob_texts(self.tokenizer, seq.output_logprobs[-1]),
                finish_reason=reason if done else None,
                prompt_tokens=seq.num_prompt_tokens,
                completion_tokens=seq.num_generated,
            )
            out.append((active.callback, output))
        return out, due

    def _with_prompt_logprobs(
        self,
        deliveries: list[tuple[OutputCallback, GenerationOutput]],
        due: list[tuple[int, Seq, list]],
    ) -> list[tuple[OutputCallback, GenerationOutput]]:
        for i, seq, values in due:
            callback, output = deliveries[i]
            scored = prompt_logprob_texts(self.tokenizer, seq.prompt_token_ids[0], values)
            deliveries[i] = (callback, attrs.evolve(output, prompt_logprobs=scored))
        return deliveries

    def _final(self, active: _Active, reason: str, error: str | None = None) -> GenerationOutput:
        return GenerationOutput(
            request_id=active.request_id,
            text="",
            token_ids=(),
            finish_reason=reason,
            prompt_tokens=active.seq.num_prompt_tokens,
            completion_tokens=active.seq.num_generated,
            error=error,
        )

    @staticmethod
    def _deliver(deliveries: list[tuple[OutputCallback, GenerationOutput]]) -> None:
        for callback, output in deliveries:
            try:
                callback(output)
            except Exception:
                log.exception("output callback for request %s failed", output.request_id)
