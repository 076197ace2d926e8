"""The peer-copy probe, run as ``python -m rt.plugins.p2p.probe --pairs 0-1,0-2``.

It runs in a process of its own, so the CUDA contexts it opens on every GPU and the
peer access it enables never live in a rank. For each pair ``(i, j)`` it copies a
tensor of random values from GPU ``i`` to GPU ``j`` and back, two ways each direction,
and checks every value:

* a contiguous copy, which CUDA does with its copy engines (``cudaMemcpyPeer``);
* a copy that also widens the dtype, which torch runs as a kernel on the source GPU
  storing straight into the peer's memory; torch enables peer access for it
  (``cudaDeviceEnablePeerAccess``) and raises when that fails.

A pair whose GPUs say they cannot access each other (``cudaDeviceCanAccessPeer``) is
"no access" without copying: torch would still copy, staged through host memory.

Output is one JSON object per line on stdout (the parent reads them as they come, so a
probe that dies mid-pair still reports the pairs before it)::

    {"event": "ready", "devices": ["GPU-...", ...], "seconds": 0.41}
    {"event": "pair", "i": 0, "j": 1, "ok": true, "error": null, "seconds": 0.002}
    {"event": "error", "error": "no CUDA devices: ..."}

Exit codes: 0 every pair reported; 2 no CUDA (or bad arguments); 3 stopped after a
CUDA error (the context may be unusable, so the parent tests the remaining pairs in a
fresh process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

EXIT_OK = 0
EXIT_NO_CUDA = 2
EXIT_CUDA_ERROR = 3
DEFAULT_BYTES = 4 * 1024 * 1024


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """``"0-1,0-2"`` -> ``[(0, 1), (0, 2)]``; ``""`` -> ``[]``."""
    pairs = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        a, sep, b = item.partition("-")
        if not sep or not a.isdigit() or not b.isdigit() or a == b:
            raise ValueError(f"a pair is two different GPU indices like 0-1, got {item!r}")
        pairs.append((int(a), int(b)))
    return pairs


def format_pairs(pairs: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{i}-{j}" for i, j in pairs)


def emit(out: TextIO, event: str, **fields: Any) -> None:
    out.write(json.dumps({"event": event, **fields}) + "\n")
    out.flush()  # the parent reads line by line; a crash must not lose what was said


def copy_round_trip(torch: Any, i: int, j: int, nbytes: int) -> str | None:
    """Copy random values GPU i -> j -> i both ways; None when every value came back,
    else why not. CUDA errors propagate (the caller stops the probe)."""
    if not (torch.cuda.can_device_access_peer(i, j) and torch.cuda.can_device_access_peer(j, i)):
        return "cudaDeviceCanAccessPeer: no peer access between these GPUs"
    di, dj = torch.device("cuda", i), torch.device("cuda", j)
    n = max(1, nbytes // 4)
    gen = torch.Generator(device=di).manual_seed(1000 * i + j + 1)
    # src: [n] int32 on GPU i, every bit pattern equally likely
    src = torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, device=di, generator=gen)
    on_j = src.to(dj)  # copy engine, i -> j
    wide_on_j = src.to(device=dj, dtype=torch.int64)  # kernel on i storing into j
    back = on_j.to(di)  # copy engine, j -> i
    narrow_back = wide_on_j.to(device=di, dtype=torch.int32)  # kernel on j storing into i
    torch.cuda.synchronize(di)
    torch.cuda.synchronize(dj)
    if not torch.equal(on_j.to(torch.int64), wide_on_j):
        return f"values differ on GPU {j} between the copy-engine and the kernel copy from GPU {i}"
    if not torch.equal(back, src):
        return f"values changed on the copy-engine round trip {i} -> {j} -> {i}"
    if not torch.equal(narrow_back, src):
        return f"values changed on the kernel round trip {i} -> {j} -> {i}"
    return None


def run(pairs: Sequence[tuple[int, int]], nbytes: int, out: TextIO) -> int:
    """Probe ``pairs`` and report on ``out``; the exit code."""
    t0 = time.perf_counter()
    try:
        import torch
    except ImportError as e:
        emit(out, "error", error=f"no CUDA devices: torch is not importable ({e})")
        return EXIT_NO_CUDA
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        emit(out, "error", error="no CUDA devices: torch.cuda.is_available() is False")
        return EXIT_NO_CUDA
    count = torch.cuda.device_count()
    devices = [str(torch.cuda.get_device_properties(d).uuid) for d in range(count)]
    bad = [p for p in pairs if max(p) >= count]
    if bad:
        emit(out, "error", error=f"pair {bad[0][0]}-{bad[0][1]}: only {count} CUDA devices")
        return EXIT_NO_CUDA
    for d in range(count):  # open every context now: its cost is not one pair's
        torch.empty(1, device=torch.device("cuda", d))
    emit(out, "ready", devices=devices, seconds=round(time.perf_counter() - t0, 4))
    for i, j in pairs:
        start = time.perf_counter()
        try:
            error = copy_round_trip(torch, i, j, nbytes)
        except Exception as e:  # a CUDA error: report it, then leave (the context may be broken)
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
            emit(out, "pair", i=i, j=j, ok=False, error=error, seconds=_since(start))
            return EXIT_CUDA_ERROR
        emit(out, "pair", i=i, j=j, ok=error is None, error=error, seconds=_since(start))
    return EXIT_OK


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rt.plugins.p2p.probe",
        description="copy a tensor between every given GPU pair and back; JSON lines out",
    )
    parser.add_argument("--pairs", default="", help="GPU index pairs, e.g. 0-1,0-2,1-2")
    parser.add_argument(
        "--bytes", type=int, default=DEFAULT_BYTES, help="bytes copied per direction"
    )
    args = parser.parse_args(argv)
    try:
        pairs = parse_pairs(args.pairs)
    except ValueError as e:
        parser.error(str(e))
    return run(pairs, args.bytes, sys.stdout)


if __name__ == "__main__":
    raise SystemExit(main())
