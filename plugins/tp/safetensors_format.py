"""The safetensors file format, read and written in plain Python.

Reading: :func:`read_header` checks a file's header against the file before anything maps
it, so a truncated download or a corrupt header is a one-line ``ModelError`` that names the
file and what is wrong, not a Rust deserialisation error (or a SIGBUS on a mapped page past
the end of the file).

Writing: :func:`write_file` writes tensors as the bytes they already hold, through
Python's own file I/O, so a full or read-only disk raises ``OSError`` (the safetensors
package's Rust writer raises a ``SafetensorError`` that callers cannot tell from a bug)
and the data is written once, with no second in-memory copy of a 540 MB model.

Layout: an 8-byte little-endian header length, a JSON header padded with spaces to a
multiple of 8, then the tensors' bytes back to back in the order of their offsets.

    >>> header = read_header(Path("model.safetensors"))  # doctest: +SKIP
    >>> header.tensors["lm_head.weight"].shape
    (49152, 576)
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from rt.core.errors import ModelError

# Bytes per element of each dtype the format names (safetensors' Dtype enum).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
# safetensors refuses larger headers; a bigger length field is garbage, not a header.
MAX_HEADER_BYTES = 100_000_000
FIX = "re-download or re-convert it"


@attrs.frozen
class TensorEntry:
    """One tensor as a header describes it; ``begin``/``end`` are offsets into the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@attrs.frozen
class Header:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int  # where the tensors' bytes begin: 8 + the header's length


@attrs.frozen
class TensorBytes:
    """A tensor to write: its safetensors dtype, shape and contiguous bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview


def read_header(path: Path) -> Header:
    """Parse and check ``path``'s header: JSON, known dtypes, every tensor's span equal to
    its shape times its dtype's size, the spans tiling the data, the data all present.

    Raises ModelError naming the file, what is wrong and the fix.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise _truncated(path, f"it has {size} bytes, fewer than the 8-byte header length")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise _corrupt(path, f"its header length field says {length} bytes")
        if 8 + length > size:
            raise _truncated(
                path, f"the header says it is {length} bytes but the file has {size} bytes"
            )
        raw = f.read(length)
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, f"the header is not JSON ({e})") from e
    if not isinstance(parsed, dict):
        raise _corrupt(path, "the header is not a JSON object")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "its __metadata__ is not a map of strings")
    tensors = {name: _entry(path, name, value) for name, value in parsed.items()}
    _check_spans(path, tensors, data_start=8 + length, size=size)
    return Header(tensors, metadata, 8 + length)


def _entry(path: Path, name: str, value: Any) -> TensorEntry:
    if not isinstance(value, dict):
        raise _corrupt(path, f"tensor {name!r} is not described by a JSON object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise _corrupt(path, f"tensor {name!r} has shape {shape!r}, not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _corrupt(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    need = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != need:
        raise _corrupt(
            path,
            f"tensor {name!r} of shape {shape} in {dtype} needs {need} bytes but its "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}",
        )
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_spans(path: Path, tensors: dict[str, TensorEntry], data_start: int, size: int) -> None:
    at = 0
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if t.begin != at:
            what = "overlaps the one before it" if t.begin < at else "leaves a gap before it"
            raise _corrupt(path, f"tensor {name!r} at data offset {t.begin} {what}")
        if data_start + t.end > size:
            raise _truncated(
                path,
                f"the header says tensor {name!r} ends at byte {data_start + t.end} but the "
                f"file has {size} bytes",
            )
        at = t.end
    if data_start + at != size:
        raise _corrupt(path, f"it has {size - data_start - at} bytes after the last tensor's data")


def _truncated(path: Path, why: str) -> ModelError:
    return ModelError(f"{path} is truncated: {why}; {FIX}")


def _corrupt(path: Path, why: str) -> ModelError:
    return ModelError(f"{path} has a corrupt header: {why}; {FIX}")


def write_file(
    path: Path, tensors: Mapping[str, TensorBytes], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` to ``path`` as a safetensors file and fsync it.

    Tensors are laid out largest element first, so each starts at a multiple of its
    element size (the header is padded to 8) and a mapped file gives aligned views.
    Raises OSError when the disk is full or read-only; the caller owns the temp name.
    """
    order = sorted(tensors, key=lambda n: (-DTYPE_SIZES[tensors[n].dtype], n))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    at = 0
    for name in order:
        t = tensors[name]
        nbytes = t.data.nbytes
        assert nbytes == math.prod(t.shape) * DTYPE_SIZES[t.dtype], name
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [at, at + nbytes]}
        at += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            f.write(tensors[name].data)
        f.flush()
        os.fsync(f.fileno())
