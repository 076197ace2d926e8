"""Every hook rt calls, in the order a startup reaches them.

Stage hooks take ``config`` (the resolved, frozen :class:`rt.core.config.Config`)
and ``runtime`` (the :class:`rt.core.runtime.Runtime` of this process: rank,
results of earlier stages, the timeline). A hookimpl may accept any subset of a
hook's arguments, so ``def rt_warmup(): ...`` is a valid implementation.

Built-in implementations of ``firstresult`` hooks carry ``trylast=True``: any
selected plugin that returns a result takes over, whatever the registration order.
A hookimpl raises :class:`rt.core.SkipStage` to record a skip with a reason.
``docs/hooks.md`` documents each hook; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from rt.core.markers import hookspec

# ---------------------------------------------------------------------------
# CLI and runtime set-up
# ---------------------------------------------------------------------------


@hookspec
def rt_register_commands(subparsers: Any) -> None:
    """Add ``rt`` subcommands.

    ``subparsers`` is the ``argparse`` sub-parser action of the ``rt`` command.
    Set ``handler`` on the new parser: a callable ``handler(args, cli) -> int``
    where ``cli`` is the :class:`rt.core.cli_context.CliContext` (catalog,
    selection, plugin manager, config loader).

    Example::

        @hookimpl
        def rt_register_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--name", default="world")
            p.set_defaults(handler=lambda args, cli: print("hello", args.name) or 0)
    """


@hookspec
def rt_add_options(parser: Any, command: str) -> None:
    """Add options to the parser of one ``rt`` subcommand.

    Called once per subcommand after all commands are registered. An option whose
    ``dest`` contains a dot is a config override: ``--port 9000`` with
    ``dest="server.port"`` sets ``server.port`` at CLI precedence. Use
    ``default=argparse.SUPPRESS`` so an absent flag does not override anything.

    Example::

        @hookimpl
        def rt_add_options(parser, command):
            if command == "serve":
                parser.add_argument("--port", dest="server.port", type=int,
                                    default=argparse.SUPPRESS)
    """


@hookspec
def rt_cli_start(command: str, config: Any) -> None:
    """Called once the CLI knows the subcommand and the plugin set, before it builds the
    parser and before any runtime exists: the earliest point a plugin can start
    background work (such as importing torch) that a later stage will want done.

    ``command`` is the subcommand name ("serve", "generate", ...; "" for none);
    ``config`` is resolved from the profile, config file, environment, ``--set`` and
    ``--sequential-startup`` (other dedicated flags such as ``--tp`` are not parsed
    yet). With ``config.startup.sequential`` nothing may start early: the sequential
    baseline overlaps nothing. Must return at once.

    Example::

        @hookimpl
        def rt_cli_start(command, config):
            if command == "serve" and not config.startup.sequential:
                threading.Thread(target=importlib.import_module, args=("torch",),
                                 daemon=True).start()
    """


@hookspec
def rt_resident_preload(config: Any) -> dict[str, str] | None:
    """Called once in a resident process (the zygote, ``rt zygote start``) before it
    serves: load what every ``rt serve`` / ``rt generate`` forked from it would load
    again, so that a command forked from it finds it done. Import modules; load small
    state that is the same for every start with this ``config`` (a tokenizer) where it
    is found without downloads or conversions.

    Runs on the process's only thread, which must stay its only one: no thread may be
    started (a fork copies only the forking thread, so a lock another thread holds
    stays held in every child), no CUDA context created, no torch operation run (it
    starts torch's thread pool). Returns notes for ``rt zygote status`` (name -> what
    was loaded), or None.

    Example::

        @hookimpl
        def rt_resident_preload(config):
            import starlette.applications  # noqa: F401
            return {"http": "starlette"}
    """


@hookspec
def rt_register_benchmarks(subparsers: Any) -> None:
    """Add ``rt bench`` subcommands, the same way as :func:`rt_register_commands`.

    Example::

        @hookimpl
        def rt_register_benchmarks(subparsers):
            p = subparsers.add_parser("generate", help="output tokens/s")
            p.add_argument("--json", action="store_true")
            p.set_defaults(handler=bench_generate)
    """


@hookspec
def rt_configure(config: Any, runtime: Any) -> None:
    """Called once per runtime (driver and every rank) before the first stage runs.

    The place to register helper plugins on ``runtime.pm`` or to prepare state
    the stages share. The built-in ``timing`` plugin registers its span-recording
    wrappers here.

    Example::

        @hookimpl
        def rt_configure(runtime):
            runtime.pm.register(MyTracer(runtime.timeline), name="my-tracer")
    """


# ---------------------------------------------------------------------------
# model: resolve what to serve, in the driver
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_resolve_model(config: Any, runtime: Any) -> Any:
    """Find the model folder to serve (``firstresult``).

    Return a record with at least ``path`` (a local folder holding config.json,
    the safetensors shards and tokenizer files), ``name`` (shown to users) and
    ``files`` (every file load-weights and the tokenizer will open, so preload can
    prefetch exactly those). Converting a model once (the default GGUF) belongs here.

    Example::

        @hookimpl
        def rt_resolve_model(config):
            return resolve_model(config.model.source, config.model.revision,
                                 config.model.download_dir)
    """


# ---------------------------------------------------------------------------
# tokenizer: load it while the weights load, in the driver
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_load_tokenizer(config: Any, runtime: Any) -> Any:
    """Load the tokenizer and chat template of the resolved model (``firstresult``).

    Example::

        @hookimpl(trylast=True)
        def rt_load_tokenizer(runtime):
            return Tokenizer.from_dir(runtime.result("model").path)
    """


# ---------------------------------------------------------------------------
# preload: runs first, at CLI entry, in the driver
# ---------------------------------------------------------------------------


@hookspec
def rt_preload(config: Any, runtime: Any) -> Any:
    """Start background work that later stages will want done: imports, a
    forkserver, page-cache prefetch. Collecting: every implementation runs, each
    is its own span in the timeline. Return quickly; do the work in a daemon
    thread and let the stage that needs it wait for it.

    Example::

        @hookimpl
        def rt_preload(config):
            if config.preload.import_modules:
                threading.Thread(target=importlib.import_module, args=("torch",),
                                 daemon=True).start()
    """


# ---------------------------------------------------------------------------
# frontend: the HTTP server comes up early, in the driver
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_frontend(config: Any, runtime: Any) -> Any:
    """Start the API frontend and return a handle to it (``firstresult``).

    The frontend should bind its socket at once so ``/health`` answers while the
    other stages still run, and report ``/ready`` only when ``runtime.ready`` is set.

    Example::

        @hookimpl(trylast=True)
        def rt_frontend(config, runtime):
            return start_http_server(config.server, runtime)
    """


# ---------------------------------------------------------------------------
# workers: spawn the tensor-parallel ranks
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_start_workers(config: Any, runtime: Any) -> Any:
    """Start the TP ranks and initialise ``torch.distributed`` (``firstresult``).

    Return a handle describing the worker group. Each rank rebuilds its own
    plugin manager from ``runtime.selection`` and runs the ``ranks`` stages.

    Example::

        @hookimpl(trylast=True)
        def rt_start_workers(config, runtime):
            return WorkerGroup.spawn(config.parallel.tp, runtime.selection)
    """


# ---------------------------------------------------------------------------
# p2p-check: every rank, in the background
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_p2p_check(config: Any, runtime: Any) -> Any:
    """Find which GPU pairs can access each other's memory (``firstresult``).

    Return a :class:`P2PTable`-like record. Without CUDA devices raise
    ``SkipStage("no CUDA devices")``: a recorded skip, not an error.

    Example::

        @hookimpl
        def rt_p2p_check(config, runtime):
            gpus = [str(torch.cuda.get_device_properties(i).uuid) for i in range(n)]
            return P2PTable(tuple(gpus), my_vendor_table[tuple(gpus)], "hardware-table:mine")
    """


# ---------------------------------------------------------------------------
# load-weights: every rank reads its shard
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_load_weights(config: Any, runtime: Any) -> Any:
    """Load this rank's shard of the model weights and return the model (``firstresult``).

    Example::

        @hookimpl(trylast=True)
        def rt_load_weights(config, runtime):
            return load_sharded(config.model, rank=runtime.rank,
                                world_size=runtime.world_size)
    """


# ---------------------------------------------------------------------------
# kv-cache: every rank sizes and allocates its KV cache
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_allocate_kv_cache(config: Any, runtime: Any) -> Any:
    """Size the paged KV cache from the memory budget and allocate it (``firstresult``).

    Example::

        @hookimpl(trylast=True)
        def rt_allocate_kv_cache(config, runtime):
            model = runtime.result("load-weights")
            return model.allocate_kv_cache(budget=config.cache.memory)
    """


# ---------------------------------------------------------------------------
# compile: every rank
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_compile(config: Any, runtime: Any) -> Any:
    """Compile each rank's step (``firstresult``): ``compile.mode`` is ``off``,
    ``default`` (before ready) or ``background`` (while serving eagerly).

    The engine's ``load-weights`` result offers its step functions through the
    ``rt.core.compile.CompileTarget`` protocol, so a compiler needs no engine import.
    The built-in ``compile`` plugin runs ``torch.compile`` with a cache per
    ``rt.core.compile_cache.CompileKey``; see docs/compile.md.

    Example::

        @hookimpl
        def rt_compile(config, runtime):
            target = runtime.result("load-weights")
            if config.compile.mode == "off" or not isinstance(target, CompileTarget):
                raise SkipStage("nothing to compile")
            compiled = {f.name: my_compiler(f.fn) for f in target.step_functions()}
            for name, fn in compiled.items():
                target.warm(name, fn)
            target.install_compiled(compiled, now=True)
            return sorted(compiled)
    """


# ---------------------------------------------------------------------------
# graph-capture: every rank
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_graph_capture(config: Any, runtime: Any) -> Any:
    """Capture CUDA graphs for the configured batch sizes, or arrange lazy capture.

    Example::

        @hookimpl
        def rt_graph_capture(config, runtime):
            target = runtime.result("load-weights")  # an rt.core.graphs.GraphTarget
            if (why := target.graph_support()) is not None:
                raise SkipStage(why)  # e.g. "no CUDA device: CUDA graphs need one"
            for size in sorted(target.prepare_graphs(config.graphs.capture_sizes), reverse=True):
                target.capture_graph(size)
            target.use_graphs(lazy=False)
    """


# ---------------------------------------------------------------------------
# metadata-broadcast: every rank
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def rt_metadata_broadcaster(config: Any, runtime: Any) -> Any:
    """Build the driver -> ranks channel that carries each step's metadata.

    Return the channel (``firstresult``) after verifying it with a round trip: the
    driver sends a ``ControlMessage("ping")`` and every rank checks the schema
    version and plugin set with ``rt.core.channel.check_ping`` (the built-in
    ``object-list`` plugin shows how), so a mismatch fails startup.

    Example::

        @hookimpl
        def rt_metadata_broadcaster(config, runtime):
            return ShmBroadcastChannel.open(runtime)
    """


# ---------------------------------------------------------------------------
# warmup: every rank, last
# ---------------------------------------------------------------------------


@hookspec
def rt_warmup(config: Any, runtime: Any) -> Any:
    """Run real work so the first user request is not slow. Collecting.

    Example::

        @hookimpl
        def rt_warmup(runtime):
            runtime.result("engine").generate_tokens([1, 2, 3], max_tokens=2)
    """


# ---------------------------------------------------------------------------
# shutdown
# ---------------------------------------------------------------------------


@hookspec
def rt_shutdown(config: Any, runtime: Any) -> None:
    """Release what the stages acquired: processes, sockets, shared memory.

    Called once on every exit path of a runtime that ran ``rt_configure`` (normal
    exit, SIGTERM, a failed startup). Must not raise; it is called even when the
    stage that would have created the resource never ran.

    Example::

        @hookimpl
        def rt_shutdown(runtime):
            channel = runtime.results.get("metadata-broadcast")
            if channel is not None:
                channel.close()
    """
