"""The reading half of the frame layout in ``codec.py``: frames back into the exact records."""

from __future__ import annotations

import struct
from typing import Any

import attrs
from rt.core.channel import ControlMessage, Message
from rt.core.step import STEP_SCHEMA_VERSION, SamplingParams, StepMetadata

from rt_shm_broadcast.codec import (
    _CACHE_LIMIT,
    _CONTROL_KINDS,
    _U32,
    HEADER_BYTES,
    KIND_CONTROL,
    KIND_SPILL,
    SAME_SAMPLING,
    FrameError,
    Spill,
    _frame,
    _pad8,
    decode_sampling,
    frame_header,
    step_body_bytes,
)


def _step_factory() -> Any:
    """A function equal to ``StepMetadata(*values)`` without the frozen ``__init__``'s
    per-field ``object.__setattr__`` calls: setting the slots directly takes ~0.6 us
    instead of ~2 us, a tenth of a 64-sequence decode."""
    names = [f.name for f in attrs.fields(StepMetadata)]
    setters = {f"set_{name}": getattr(StepMetadata, name).__set__ for name in names}
    lines = [f"def new_step({', '.join(names)}):", "    step = new(StepMetadata)"]
    lines += [f"    set_{name}(step, {name})" for name in names]
    lines.append("    return step")
    scope = {"new": object.__new__, "StepMetadata": StepMetadata, **setters}
    exec("\n".join(lines), scope)  # noqa: S102 - generated from the record's own fields
    return scope["new_step"]


_new_step = _step_factory()
if _frame is not None and _frame.STEP_FIELDS != tuple(f.name for f in attrs.fields(StepMetadata)):
    raise ImportError(  # a build of _frame.c older than rt's StepMetadata: rebuild it
        f"rt_shm_broadcast._frame fills StepMetadata fields {_frame.STEP_FIELDS}, rt has "
        f"{tuple(f.name for f in attrs.fields(StepMetadata))}: reinstall rt-shm-broadcast"
    )
_VIEW_CACHE = 64  # buffers a decoder keeps casts and views for (a ring has a few slots)


class Decoder:
    """Reads the frames one ``Encoder`` wrote, in the order it wrote them."""

    def __init__(self) -> None:
        self._sampling: tuple[SamplingParams, ...] | None = None
        # Record bytes -> params: a sequence's params are decoded (and validated) once.
        self._records: dict[bytes, SamplingParams] = {}
        self._views: dict[int, tuple[memoryview, list]] = {}  # id(buf) -> (buf, cache)

    def decode(self, buf: Any) -> Message:
        """Decode the frame at the start of ``buf`` (it may be longer than the frame).

        A step's arrays are views of ``buf``, valid while its contents are (the ring
        keeps a slot intact until this rank asks for the next message)."""
        if not isinstance(buf, memoryview):
            buf = memoryview(buf)
        cache = self._cache(buf)
        if _frame is not None:
            step = _frame.read_step(buf, cache, STEP_SCHEMA_VERSION, self._sampling, StepMetadata)
            if step is not None:  # the usual step: its sampling records are the last ones
                return step
        return self._decode(buf, cache[:3])

    def forget(self, buf: Any) -> None:
        """Drop what :meth:`decode` keeps for ``buf`` (a one-off spill buffer)."""
        self._views.pop(id(buf), None)

    def _cache(self, buf: memoryview) -> list:
        """Per buffer: ``buf`` cast to int64, int32 and int8 (made once; every array of
        a frame is one slice of one of them), then the counts and nine views of the
        last frame the C path read from it, which it reuses when the counts match."""
        hit = self._views.get(id(buf))
        if hit is not None and hit[0] is buf:
            return hit[1]
        size = buf.nbytes
        cache = [buf[: size // 8 * 8].cast("q"), buf[: size // 4 * 4].cast("i"), buf.cast("b")]
        cache += [-1, -1, -1] + [None] * 9
        if len(self._views) >= _VIEW_CACHE:
            self._views.clear()
        self._views[id(buf)] = (buf, cache)  # holding buf keeps its id from being reused
        return cache

    def _decode(self, buf: memoryview, casts: tuple) -> Message:
        fields = frame_header(buf)
        _, _, schema, kind, flags, _, ident, total, n, n_tokens, n_blocks, n_rec, rec_bytes = fields
        if kind == KIND_CONTROL:
            return _decode_control(buf, ident, n, total)
        if kind == KIND_SPILL:
            return Spill(ident)
        end = HEADER_BYTES + step_body_bytes(n, n_tokens, n_blocks)
        if end + rec_bytes != total:
            raise FrameError(
                f"frame counts ({n} seqs, {n_tokens} tokens, {n_blocks} block ids, "
                f"{rec_bytes} sampling bytes) do not add up to its {total} bytes"
            )
        if flags & ~SAME_SAMPLING:
            raise FrameError(f"unknown frame flags {flags:#x}")
        if flags & SAME_SAMPLING:
            if self._sampling is None or n_rec or rec_bytes:
                raise FrameError(
                    "frame reuses sampling records this rank never received "
                    "(a frame was lost or read out of order)"
                )
            sampling = self._sampling
        else:
            sampling = self._read_records(buf, end, total, n_rec)
        as_q, as_i, as_b = casts
        ints = HEADER_BYTES + 8 * n  # the five int32 arrays after seq_ids
        i0, t0 = ints // 4, (ints + 21 * n + _pad8(n)) // 4
        counts, starts, generated, index, table_lens = (
            as_i[i0 + k * n : i0 + (k + 1) * n] for k in range(5)
        )
        if n:
            problem = _seq_problem(buf, ints, n, n_tokens, n_blocks, len(sampling))
            if problem:
                _raise_seq_problem(problem, counts, table_lens, n_tokens, n_blocks, sampling)
        self._sampling = sampling
        return _new_step(
            ident, as_q[HEADER_BYTES // 8 : HEADER_BYTES // 8 + n], counts, starts, generated,
            as_b[ints + 20 * n : ints + 21 * n], index, table_lens, as_i[t0 : t0 + n_tokens],
            as_i[t0 + n_tokens : t0 + n_tokens + n_blocks], sampling, schema,
        )  # fmt: skip

    def _read_records(self, buf: Any, off: int, end: int, count: int) -> tuple[SamplingParams, ...]:
        out = []
        for _ in range(count):
            start, stop = _field(
                buf, off, end, "sampling records truncated",
                "sampling record of {} bytes runs past the frame",
            )  # fmt: skip
            key = bytes(buf[start:stop])
            sp = self._records.get(key)
            if sp is None:
                try:
                    sp = decode_sampling(key)
                except (struct.error, ValueError, TypeError) as e:
                    raise FrameError(f"bad sampling record: {e}") from None
                if len(self._records) >= _CACHE_LIMIT:
                    self._records.clear()
                self._records[key] = sp
            out.append(sp)
            off = stop
        if off != end:
            raise FrameError(f"{end - off} stray bytes after the sampling records")
        return tuple(out)


def _field(buf: Any, off: int, end: int, truncated: str, overrun: str) -> tuple[int, int]:
    """Bounds ``(start, stop)`` of the u32-length-prefixed field at ``off``, which must
    end by ``end``; ``overrun`` may name the length with ``{}``."""
    if off + 4 > end:
        raise FrameError(truncated)
    (length,) = _U32.unpack_from(buf, off)
    if off + 4 + length > end:
        raise FrameError(overrun.format(length))
    return off + 4, off + 4 + length


def _seq_problem(buf: Any, ints: int, n: int, n_tokens: int, n_blocks: int, n_sampling: int) -> int:
    """0, or the code of what is wrong with the per-sequence arrays (``_frame.c``'s
    read_step makes the same checks)."""
    flags = ints + 20 * n
    i32 = buf[ints:flags].cast("i")
    # Every int32 per-seq value is >= 0: no little-endian sign byte has bit 7 set.
    if not buf[ints:flags].tobytes()[3::4].isascii():
        return 3
    if sum(i32[:n]) != n_tokens:
        return 1
    if sum(i32[4 * n :]) != n_blocks:
        return 2
    if max(i32[3 * n : 4 * n]) >= n_sampling:
        return 4
    if buf[flags : flags + n].tobytes().translate(None, b"\x00\x01"):
        return 5
    return 0


def _raise_seq_problem(
    problem: int, counts: Any, table_lens: Any, n_tokens: int, n_blocks: int, sampling: tuple
) -> None:
    if problem in (1, 2):
        raise FrameError(
            f"per-seq counts cover {sum(counts)} tokens and {sum(table_lens)} block "
            f"ids, the header says {n_tokens} and {n_blocks}"
        )
    if problem == 3:
        raise FrameError("frame has a negative count, position or index")
    if problem == 4:
        raise FrameError(f"a sampling index is outside the step's {len(sampling)} sampling records")
    raise FrameError("a sample flag is neither 0 nor 1")


def _decode_control(buf: Any, seq_id: int, code: int, total: int) -> ControlMessage:
    if code >= len(_CONTROL_KINDS):
        raise FrameError(f"unknown control kind code {code}")
    if total < HEADER_BYTES + 8:
        raise FrameError(f"control frame of {total} bytes is shorter than its fixed part")
    schema, count = struct.unpack_from("<iI", buf, HEADER_BYTES)
    off = HEADER_BYTES + 8
    names = []
    truncated = "control frame truncated in its plugin names"
    for _ in range(count):
        start, off = _field(buf, off, total, truncated, truncated)
        try:
            names.append(bytes(buf[start:off]).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FrameError(f"control frame plugin name is not UTF-8: {e}") from None
    if off != total:
        raise FrameError(f"{total - off} stray bytes after the control message")
    return ControlMessage(
        _CONTROL_KINDS[code], seq_id=seq_id, schema_version=schema, plugins=tuple(names)
    )
