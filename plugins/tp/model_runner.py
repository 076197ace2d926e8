"""Owns the model on this rank's device: builds it, loads it, binds the KV cache, runs steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from rt.core.compile import StepFunction
from rt.core.errors import ModelError
from rt.core.graphs import GraphCapture
from rt.core.step import StepMetadata
from rt.plugins.tp.compiled_step import CompiledSteps, padded
from rt.plugins.tp.cores import run_with_threads, threads_per_rank
from rt.plugins.tp.kv_cache import KVCacheSpec
from rt.plugins.tp.layers.attention import Attention
from rt.plugins.tp.layers.attention_metadata import as_long, build_attention_metadata
from rt.plugins.tp.layers.compiled_ops import step_context
from rt.plugins.tp.layers.cpu_layout import apply_decode_layout
from rt.plugins.tp.layers.int4 import count_linear_layers, int4_shell, quantize_model
from rt.plugins.tp.layout_probe import LayoutChoice, choose
from rt.plugins.tp.loader import load_weights, materialize
from rt.plugins.tp.model_config import ModelConfig
from rt.plugins.tp.models import get_model_class
from rt.plugins.tp.parallel import ParallelContext
from rt.plugins.tp.prepared_weights import load_prepared, save_prepared_async
from rt.plugins.tp.prompt_logprobs import PromptLogprobs, prompt_rows
from rt.plugins.tp.prompt_logprobs import compute as compute_prompt_logprobs
from rt.plugins.tp.weights_plan import prepared_dir, prepared_file


class ModelRunner:
    """One rank's model.

    Example::

        runner = ModelRunner("/models/smollm2", ParallelContext.single(), torch.float32,
                             torch.device("cpu"))
        runner.load_weights()
        runner.allocate_kv_cache(num_blocks=64)
        logits = runner.run(step)  # [num sampled seqs, vocab] float32
    """

    def __init__(
        self,
        model_dir: str | Path,
        ctx: ParallelContext,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        block_size: int = 16,
        quantization: str = "none",
        compile_sizes: tuple[int, ...] = (1,),
    ) -> None:
        self.model_dir = Path(model_dir)
        self.ctx = ctx
        self.model_config = ModelConfig.from_dir(self.model_dir)
        self.model_config.check_tp(ctx.world_size)
        self.model_class = get_model_class(self.model_config.architecture)
        self.dtype = dtype or self.model_config.torch_dtype
        self.device = torch.device(device) if device is not None else ctx.device
        self.block_size = block_size
        # "int4" or "none" (layers/int4.py); the setting may say "auto"
        self.quantization = self.model_config.quantization(quantization, self.device.type)
        self.int4_layers = 0  # linear layers held in int4 (some shapes cannot be packed)
        self.model: torch.nn.Module | None = None
        self.kv_cache: torch.Tensor | None = None  # [2, L, num_blocks, block_size, Hkv, D]
        self.save_thread: threading.Thread | None = None  # saving prepared weights
        self.opened_files: list[Path] = []  # the weight files load_weights() read
        # CPU weights may be split into one block per thread (layers/cpu_layout.py);
        # decided in load_weights() (layout_probe.py), where a first start measures it
        self.layout: LayoutChoice | None = None
        # compiled step functions, once the compile stage installs them (compiled_step.py)
        self.compiled = CompiledSteps(compile_sizes)
        self.compiled.rank = ctx.rank
        # CUDA graphs of the decode step, once the graph-capture stage sets them up
        # (cuda_graphs.py; a CudaGraphs)
        self.graphs = None
        # the last step's hidden rows its prompt logprobs need (prompt_logprobs.py)
        self._prompt_hidden: tuple[list, torch.Tensor] | None = None  # (spans, rows)

    @property
    def kv_spec(self) -> KVCacheSpec:
        c = self.model_config
        return KVCacheSpec(
            num_layers=c.num_hidden_layers,
            block_size=self.block_size,
            num_kv_heads=c.num_key_value_heads // self.ctx.world_size,
            head_dim=c.head_dim,
            dtype=self.dtype,
        )

    def load_weights(self, use_prepared: bool = False) -> str:
        """Build the model on the meta device, give it storage, and fill it.

        With ``use_prepared``, map this rank's prepared weights when a previous start
        saved them (see prepared_weights.py), else load the checkpoint and save them
        in the background. A checkpoint's decoder is quantized after loading when
        ``self.quantization`` says int4 (layers/int4.py); prepared int4 weights are
        mapped as they were saved. Returns where the weights came from: "prepared" or
        "checkpoint".
        """
        model = self._meta_model()
        self.layout = choose(self.ctx.world_size, self.device.type)
        folder = None
        if use_prepared:
            dtype_name = str(self.dtype).removeprefix("torch.")
            folder = prepared_dir(
                self.model_dir,
                self.ctx.rank,
                self.ctx.world_size,
                dtype_name,
                self.device.type,
                self.layout.parts,
                self.quantization,
            )
            path = prepared_file(folder)
            if path is not None:
                if self.quantization == "int4":
                    self.int4_layers = int4_shell(model)
                if load_prepared(model, path, self.device):
                    self.model = model.eval()
                    self.opened_files = [path]
                    return "prepared"
                model = self._meta_model()  # a stale file: start from the checkpoint
        materialize(model, self.device, self.dtype)
        self.opened_files = load_weights(model, self.model_dir)
        model.process_weights_after_loading()
        if self.quantization == "int4":
            # the rank's threads, in a thread whose OpenMP team ends with it: SmolLM2's
            # decoder took ~0.75 s on 2 threads against ~1.1 s on the loading thread's one
            threads = threads_per_rank(self.ctx.world_size)
            self.int4_layers = run_with_threads(lambda: quantize_model(model), threads)
        if self.device.type == "cpu":
            apply_decode_layout(model, self.layout.parts)
        self.model = model.eval()
        if folder is not None:
            self.save_thread = save_prepared_async(model, folder)
        return "checkpoint"

    def describe_quantization(self) -> str:
        """For the timeline: "none", or "int4 (120 of 120 linear layers)"."""
        if self.quantization == "none":
            return "none"
        assert self.model is not None, "load_weights() first"
        return f"int4 ({self.int4_layers} of {count_linear_layers(self.model)} linear layers)"

    def _meta_model(self) -> torch.nn.Module:
        with torch.device("meta"):
            return self.model_class(self.model_config, self.ctx)

    def bind_compute_thread(self) -> None:
        """Give the calling thread, the one that runs every step, this rank's CPU threads.

        Call it first thing in the step loop's thread; every other thread of the process
        keeps one torch thread (``rt_start_workers`` and the rank main set that). Each
        thread that runs a parallel torch op owns an OpenMP team for as long as it
        lives, and once libgomp manages more threads than there are cores it wakes its
        workers by futex instead of spinning: with the driver's main thread holding a
        team, SmolLM2's decode step on 2 cores went from ~33 to ~50 ms. A compiled step
        guards on the count, so it is set on CUDA too (where one thread does).
        """
        torch.set_num_threads(self.compute_threads)

    @property
    def compute_threads(self) -> int:
        return threads_per_rank(self.ctx.world_size) if self.device.type == "cpu" else 1

    def param_bytes(self) -> int:
        """Bytes of parameters this rank holds (tied parameters counted once)."""
        assert self.model is not None, "load_weights() first"
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def kv_bytes_per_block(self) -> int:
        return self.kv_spec.bytes_per_block

    @property
    def attention_layers(self) -> list[Attention]:
        """The model's attention layers in order, each knowing its index."""
        assert self.model is not None, "load_weights() first"
        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        assert len(layers) == self.model_config.num_hidden_layers
        for i, attn in enumerate(layers):
            attn.layer_index = i
        return layers

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.kv_cache = self.kv_spec.allocate(num_blocks, self.device)
        for i, attn in enumerate(self.attention_layers):
            attn.k_cache, attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
        self._attention = self.attention_layers

    # -- rt.core.compile.CompileTarget (compile_target.py has the key and the warm-up) --

    def step_functions(self) -> list[StepFunction]:
        self.attention_layers  # noqa: B018  (numbers the layers for the opaque operator)
        self.model.model.rotary_emb.prepare(self.device)  # made eagerly, not in the graph
        if self.compiled.started is None:
            self.compiled.started = time.time()
        return [
            StepFunction("static", self._static_body, False, self.compiled.warm_sizes("static")),
            StepFunction("dynamic", self._dynamic_body, True, self.compiled.warm_sizes("dynamic")),
        ]

    def compile_key(self) -> dict:
        from rt.plugins.tp.compile_target import compile_key

        return compile_key(self)

    def warm(self, name: str, compiled: Callable) -> None:
        from rt.plugins.tp.compile_target import warm

        warm(self, name, compiled)

    def install_compiled(self, compiled: Mapping[str, Callable], *, now: bool) -> None:
        self.compiled.install(compiled, now)

    # -- rt.core.graphs.GraphTarget (cuda_graphs.py captures and replays) --

    def graph_support(self) -> str | None:
        from rt.plugins.tp.cuda_graphs import graph_support

        return graph_support(self)

    def prepare_graphs(self, sizes: Sequence[int]) -> tuple[int, ...]:
        from rt.plugins.tp.cuda_graphs import CudaGraphs

        # lazy captures' spans reach the driver's timeline with the compile ones
        self.graphs = CudaGraphs(self, sizes, report=lambda span: self.compiled.events.append(span))
        return self.graphs.sizes

    def capture_graph(self, size: int) -> GraphCapture:
        assert self.graphs is not None, "prepare_graphs() first"
        return self.graphs.capture(size)

    def use_graphs(self, *, lazy: bool) -> None:
        assert self.graphs is not None, "prepare_graphs() first"
        self.graphs.use(lazy)

    def graph_pool_bytes(self) -> int:
        return self.graphs.pool_bytes() if self.graphs is not None else 0

    # Two functions with the same body: each compiles into its own code object's cache.
    def _static_body(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions, None)

    def _dynamic_body(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions, None)

    def _forward(self, input_ids: torch.Tensor, meta) -> torch.Tensor:
        # input_ids: [T] -> hidden: [T, H], compiled when a compiled function fits T
        tokens = input_ids.shape[0]
        chosen = self.compiled.pick(tokens)
        if chosen is None:
            return self.model(input_ids, meta.positions, meta)
        fn, size = chosen
        self.compiled.steps += 1
        with step_context(meta, self._attention, tokens):
            hidden = fn(padded(input_ids, size), padded(meta.positions, size))
        return hidden[:tokens]

    @torch.inference_mode()
    def run(self, step: StepMetadata) -> torch.Tensor | None:
        """Run one step; return float32 logits ``[num seqs with sample, vocab]``, or None
        when no sequence samples."""
        assert self.model is not None and self.kv_cache is not None, "load and allocate first"
        self._prompt_hidden = None
        self.compiled.maybe_switch(self.ctx)  # background compile: all ranks switch at once
        if self.graphs is not None:
            self.graphs.before_step()  # lazy captures, between steps, on every rank alike
        if not step.num_seqs:
            return None
        counts = as_long(step.token_counts)  # [B] new tokens per sequence
        ends = as_long(step.start_positions) + counts  # [B]
        if int(ends.max()) > self.model_config.max_model_len:
            i = int(ends.argmax())
            raise ModelError(
                f"seq {step.seq_ids[i]} reaches position {int(ends[i])}, past max_model_len="
                f"{self.model_config.max_model_len} of this model"
            )
        hidden = self.graphs.replay(step) if self.graphs is not None else None  # [T, H]
        if hidden is None:
            input_ids = as_long(step.token_ids).to(self.device)  # [T]
            meta = build_attention_metadata(step, self.block_size, self.device)
            hidden = self._forward(input_ids, meta)  # [T, H]
        self._prompt_hidden = prompt_rows(step, hidden)  # None unless a request asks
        sample = torch.frombuffer(step.sample, dtype=torch.int8).bool()  # [B]
        if not bool(sample.any()):
            return None
        last_token = counts.cumsum(0) - 1  # [B] each sequence's last token in T
        rows = last_token[sample].to(self.device)  # [N]
        return self.model.compute_logits(hidden[rows]).float()  # [N, V]

    @torch.inference_mode()
    def prompt_logprobs(
        self, step: StepMetadata, next_tokens: Mapping[int, int] | None = None
    ) -> PromptLogprobs | None:
        """After ``run(step)``, on every rank: the logprobs of the prompt tokens ``step``
        scores (``StepMetadata.prompt_rows``). Rank 0 passes ``next_tokens`` (the
        driver's, possibly empty) and gets them by sequence id; the other ranks pass
        None, take part in the projections and get None."""
        scored, self._prompt_hidden = self._prompt_hidden, None
        if scored is None:
            return None
        return compute_prompt_logprobs(self.model, step, *scored, next_tokens)
