"""``rt bench broadcast``: per-step metadata latency of each channel, side by side.

For every channel (a channel's name is its plugin's name) the benchmark spawns
``--tp`` fresh processes that join a gloo group on 127.0.0.1 and build the channel
through that plugin's own ``rt_metadata_broadcaster`` hook (with its startup round
trip), exactly as a TP rank does. Rank 0 then sends realistic decode steps: B
sequences, one new token each, block tables covering a 2k-token context that grow
by a block every ``block_size`` steps, a few shared sampling-param records.

Latency of one step = from rank 0 calling ``send`` to the last rank having decoded
it. Each reader stores its ``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for
every process on the machine) and the step id in a shared array; rank 0 waits for
every rank's ack before sending the next step, so steps never queue behind each other.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import time
from typing import Any

from rt.core.errors import UsageError

CONTEXT_TOKENS = 2048


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "broadcast", help="per-step metadata latency of each channel (send -> every rank decoded)"
    )
    p.add_argument("--tp", type=int, default=2, help="ranks, rank 0 included (default 2)")
    p.add_argument("--batch", default="1,8,64", help="sequences per step, comma separated")
    p.add_argument(
        "--channels",
        default=None,
        help="channel (plugin) names, comma separated (default: every installed one)",
    )
    p.add_argument("--iters", type=int, default=2000, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=200, help="untimed steps first")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(handler=bench_broadcast)


def channel_plugins(names: list[str] | None) -> list[Any]:
    """The installed plugins that implement ``rt_metadata_broadcaster`` (entries)."""
    from rt.core.discovery import discover

    catalog = discover()
    if names:
        found = []
        for name in names:
            entry = catalog.plugin(name)
            if entry is None:
                known = ", ".join(p.name for p in catalog.plugins)
                raise UsageError(f"--channels: no installed plugin {name!r}; installed: {known}")
            if not hasattr(entry.load(), "rt_metadata_broadcaster"):
                raise UsageError(f"--channels: plugin {name!r} does not build a channel")
            found.append(entry)
        return found
    return [p for p in catalog.plugins if hasattr(p.load(), "rt_metadata_broadcaster")]


def make_steps(batch: int, count: int, block_size: int, first_step: int = 0) -> Any:
    """Decode steps of ``batch`` sequences, generated lazily (outside the timing)."""
    from rt.core.step import SamplingParams, StepBuilder

    params = [
        SamplingParams(temperature=0.0, max_tokens=512),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=50, seed=1, stop=("\n\n",)),
    ]
    blocks_each = -(-(CONTEXT_TOKENS + count) // block_size) + 1
    tables = [list(range(s * blocks_each, s * blocks_each + blocks_each)) for s in range(batch)]
    for i in range(count):
        pos = CONTEXT_TOKENS - 1 + i
        n_blocks = pos // block_size + 1
        step = StepBuilder()  # as the engine's scheduler builds a step
        for s in range(batch):
            step.add(
                s, ((s * 7 + i) % 32000,), pos, tables[s][:n_blocks], True, i + 1, params[s % 2]
            )
        yield step.build(first_step + i)


def _percentile(sorted_us: list[float], q: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def _rank(rank: int, tp: int, port: int, entry: Any, plan: dict, acks: Any, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from rt.core.channel import ControlMessage
    from rt.core.config import Config, ParallelConfig
    from rt.core.selection import Selection
    from rt.core.startup import create_runtime
    from rt.core.step import StepMetadata

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=tp)
    groups = {"world": dist.group.WORLD}
    groups["control"] = dist.new_group(backend="gloo")
    groups["broadcast"] = dist.new_group(backend="gloo")
    config = Config(parallel=ParallelConfig(tp=tp))
    runtime = create_runtime(
        config, Selection(plugins=(entry,), stages=()), rank=rank, world_size=tp
    )
    runtime.services["process_groups"] = groups
    try:
        channel = runtime.pm.hook.rt_metadata_broadcaster(config=config, runtime=runtime)
        if rank == 0:
            out.put(_drive(channel, tp, plan, acks))
            channel.send(ControlMessage("shutdown"))
        else:
            while True:
                message = channel.recv()
                now = time.monotonic_ns()
                if not isinstance(message, StepMetadata):
                    break
                acks[2 * rank] = now
                acks[2 * rank + 1] = message.step_id  # the ack: written after the time
        dist.barrier(group=groups["control"])
    finally:
        runtime.shutdown()
        dist.destroy_process_group()


def _drive(channel: Any, tp: int, plan: dict, acks: Any) -> list[dict]:
    results, step_id = [], 1
    readers = range(1, tp)
    for batch in plan["batches"]:
        total = plan["warmup"] + plan["iters"]
        lat_us = []
        for i, step in enumerate(make_steps(batch, total, plan["block_size"], step_id)):
            t0 = time.monotonic_ns()
            channel.send(step)
            while any(acks[2 * r + 1] != step.step_id for r in readers):
                os.sched_yield()  # give the core to a reader that is still decoding
            if i >= plan["warmup"]:
                lat_us.append((max(acks[2 * r] for r in readers) - t0) / 1000)
        step_id += total
        lat_us.sort()
        results.append(
            {
                "channel": channel.name,
                "tp": tp,
                "batch": batch,
                "p50_us": round(_percentile(lat_us, 0.50), 1),
                "p95_us": round(_percentile(lat_us, 0.95), 1),
                "p99_us": round(_percentile(lat_us, 0.99), 1),
                "iters": len(lat_us),
            }
        )
    return results


def run_channel(entry: Any, tp: int, plan: dict, timeout: float = 600) -> list[dict]:
    """Spawn ``tp`` ranks that measure one channel; return rank 0's figures."""
    from rt.core.errors import RtError

    ctx = mp.get_context("spawn")
    acks = ctx.RawArray("q", 2 * tp)
    for i in range(2 * tp):
        acks[i] = -1
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        ctx.Process(target=_rank, args=(r, tp, port, entry, plan, acks, out), daemon=True)
        for r in range(tp)
    ]
    for p in procs:
        p.start()
    try:
        results = out.get(timeout=timeout)
    except Exception:
        codes = [p.exitcode for p in procs]
        raise RtError(
            f"channel {entry.name!r}: ranks did not report (exit codes {codes})"
        ) from None
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return results


def bench_broadcast(args: argparse.Namespace, cli: Any) -> int:
    if args.tp < 2:
        raise UsageError(f"--tp {args.tp}: a broadcast needs at least 2 ranks")
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        raise UsageError(f"--batch {args.batch!r}: give sizes like 1,8,64") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batch {args.batch!r}: give sizes like 1,8,64")
    names = [n.strip() for n in args.channels.split(",")] if args.channels else None
    plan = {
        "batches": batches,
        "iters": args.iters,
        "warmup": args.warmup,
        "block_size": args.block_size,
    }
    rows = []
    for entry in channel_plugins(names):
        rows += run_channel(entry, args.tp, plan)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    base = {(r["tp"], r["batch"]): r["p50_us"] for r in rows if r["channel"] == "object-list"}
    print(
        f"{'channel':<16}{'tp':>4}{'batch':>7}{'p50 us':>10}{'p95 us':>10}{'p99 us':>10}  vs object-list"
    )
    for r in rows:
        ref = base.get((r["tp"], r["batch"]))
        ratio = f"{ref / r['p50_us']:.1f}x" if ref and r["p50_us"] else "-"
        print(
            f"{r['channel']:<16}{r['tp']:>4}{r['batch']:>7}{r['p50_us']:>10}{r['p95_us']:>10}"
            f"{r['p99_us']:>10}  {ratio}"
        )
    return 0
