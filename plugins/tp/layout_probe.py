"""Which CPU weight layout decodes faster on this machine: measured once, then remembered.

``layers/cpu_layout.py`` holds each CPU matrix either as one 2-D block, whose GEMV
MKL spreads over the rank's threads, or split into one block per thread and run as
one ``bmm``. Which streams faster depends on the CPU and on the path MKL takes on it:
on a 2-core AMD EPYC (Zen 4) the split blocks decoded SmolLM2 ~1.5x faster, while on
a 2-core Intel Xeon with AMX the same split took twice as long as the plain
GEMV (~99 against ~49 ms a token). No rule of thumb covers both, so the first rank
that has more than one thread on a machine times both layouts on synthetic matrices
(~0.2 s, in a thread of its own) and writes the answer to :data:`PROBE_FILE` in the
rt cache. Every later start, and the torch-free weights plan (which names the
prepared-weights folder by the layout), reads it from there. Delete the file to
measure again.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import attrs
from rt.core.entry_points import distribution_version
from rt.core.host import cpu_model, usable_cores
from rt.core.paths import rt_cache_dir
from rt.plugins.tp.cores import run_with_threads, threads_per_rank

PROBE_FILE = "cpu-decode-layout.json"
# Split blocks are kept only when clearly faster: the 2-D layout is the simpler one and
# serves prefill as well.
BLOCKS_MIN_GAIN = 1.1
# Probe matrices: 4 tall and 4 wide float32 [2048, 1024] (64 MiB in all), shapes like a
# small model's projections, enough to leave the core-private caches.
PROBE_SHAPES = [(2048, 1024)] * 4 + [(1024, 2048)] * 4
PROBE_ROUNDS = 7


@attrs.frozen
class LayoutChoice:
    """How many blocks this rank splits each CPU weight into, and how that was decided."""

    parts: int
    how: str  # "measured", "cached", "one thread" or "device"
    plain_ms: float | None = None  # one pass over the probe matrices, 2-D layout
    blocks_ms: float | None = None  # the same, split into `threads` blocks

    def describe(self) -> str:
        layout = "2-D" if self.parts == 1 else f"{self.parts} blocks"
        if self.plain_ms is None or self.blocks_ms is None:
            return f"{layout} ({self.how})"
        return (
            f"{layout} ({self.how}: 2-D {self.plain_ms:.2f} ms, "
            f"blocks {self.blocks_ms:.2f} ms a probe pass)"
        )


@functools.cache  # one scan of sys.path per process: the key is built once per rank
def torch_version() -> str:
    """The installed torch build ("2.13.0+cpu"), read once per process without importing it."""
    return distribution_version("torch") or "none"


def machine_key(threads: int) -> str:
    """What the answer depends on: the CPU, the cores this process may use, the threads a
    rank runs and the torch build (its MKL)."""
    return f"{cpu_model()} | cores {usable_cores()} | threads {threads} | torch {torch_version()}"


def probe_path() -> Path:
    return rt_cache_dir() / PROBE_FILE


def _read_all() -> dict[str, dict]:
    try:
        data = json.loads(probe_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_choice(threads: int) -> LayoutChoice | None:
    """The remembered answer for this machine at ``threads`` threads a rank, if any."""
    entry = _read_all().get(machine_key(threads))
    if not isinstance(entry, dict) or entry.get("parts") not in (1, threads):
        return None
    return LayoutChoice(entry["parts"], "cached", entry.get("plain_ms"), entry.get("blocks_ms"))


def remember(threads: int, choice: LayoutChoice) -> None:
    """Add this machine's answer to the probe file (atomically: ranks may race)."""
    entries = _read_all()
    entries[machine_key(threads)] = attrs.asdict(choice, filter=lambda a, _: a.name != "how")
    path = probe_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)


def measure(threads: int) -> LayoutChoice:
    """Time one pass over the probe matrices in both layouts, ``threads`` torch threads
    (in a thread of its own: see cores.run_with_threads)."""
    return run_with_threads(lambda: _measure_here(threads), threads)


def _measure_here(threads: int) -> LayoutChoice:
    import torch
    from rt.plugins.tp.layers.cpu_layout import linear, split_weight

    best = {1: float("inf"), threads: float("inf")}
    with torch.inference_mode():
        plain = [torch.full(s, 0.01) for s in PROBE_SHAPES]
        layouts = {p: [split_weight(w, p) for w in plain] for p in (1, threads)}
        del plain
        inputs = [torch.full((1, s[1]), 0.5) for s in PROBE_SHAPES]
        for _ in range(PROBE_ROUNDS):  # interleaved, so a noisy moment hits both
            for parts, weights in layouts.items():
                start = time.perf_counter()
                for x, w in zip(inputs, weights, strict=True):
                    linear(x, w, None)
                best[parts] = min(best[parts], time.perf_counter() - start)
    plain_ms, blocks_ms = best[1] * 1e3, best[threads] * 1e3
    parts = threads if plain_ms > blocks_ms * BLOCKS_MIN_GAIN else 1
    return LayoutChoice(parts, "measured", round(plain_ms, 3), round(blocks_ms, 3))


def _fixed(threads: int, device_type: str) -> LayoutChoice | None:
    """The choice when there is none to make."""
    if device_type != "cpu":
        return LayoutChoice(1, "device")  # GPU weights keep their checkpoint layout
    if threads <= 1:
        return LayoutChoice(1, "one thread")
    return None


def _without_measuring(world_size: int, device_type: str) -> tuple[int, LayoutChoice | None]:
    """A rank's threads, and its layout if there is none to make or it is remembered."""
    threads = threads_per_rank(world_size)
    return threads, _fixed(threads, device_type) or cached_choice(threads)


def known_parts(world_size: int, device_type: str) -> int | None:
    """How many blocks each of a rank's weights is split into, without torch and without
    measuring: None while this machine has not been measured (the weights plan then
    expects the checkpoint, since no prepared weights can match)."""
    _, choice = _without_measuring(world_size, device_type)
    return None if choice is None else choice.parts


def choose(world_size: int, device_type: str) -> LayoutChoice:
    """This rank's layout: the remembered answer, else measured now and remembered."""
    threads, choice = _without_measuring(world_size, device_type)
    if choice is not None:
        return choice
    choice = measure(threads)
    try:
        remember(threads, choice)
    except OSError:
        pass  # a read-only cache: measured again next start, nothing worse
    return choice
