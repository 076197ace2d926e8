"""The reading half of the frame layout in ``codec.py``: frames back into the exact records."""

from __future__ import annotations

import struct
from typing import Any

import attrs
from rt.core.channel import ControlMessage, Message
from rt.core.step import SamplingParams, StepMetadata

from rt_shm_broadcast.codec import (
    _CACHE_LIMIT,
    _CONTROL_KINDS,
    _PER_SEQ_BYTES,
    _U32,
    HEADER_BYTES,
    KIND_CONTROL,
    SAME_SAMPLING,
    FrameError,
    _frame,
    decode_sampling,
    frame_header,
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


class Decoder:
    """Reads the frames one ``Encoder`` wrote, in the order it wrote them."""

    def __init__(self) -> None:
        self._sampling: tuple[SamplingParams, ...] | None = None
        # Record bytes -> params: a sequence's params are decoded (and validated) once.
        self._records: dict[bytes, SamplingParams] = {}

    def decode(self, buf: Any) -> Message:
        """Decode the frame at the start of ``buf`` (it may be longer than the frame)."""
        if not isinstance(buf, memoryview):
            buf = memoryview(buf)
        fields = frame_header(buf)
        _, _, schema, kind, flags, _, ident, total, n, n_tokens, n_blocks, n_rec, rec_bytes = fields
        if kind == KIND_CONTROL:
            return _decode_control(buf, ident, n, total)
        body = n * _PER_SEQ_BYTES + 4 * (n_tokens + n_blocks)
        if HEADER_BYTES + body + rec_bytes != total:
            raise FrameError(
                f"frame counts ({n} seqs, {n_tokens} tokens, {n_blocks} block ids, "
                f"{rec_bytes} sampling bytes) do not add up to its {total} bytes"
            )
        per_seq = HEADER_BYTES + 8 * n  # the five int32 arrays after seq_ids
        ints = per_seq + 20 * n
        # Views of the frame, no copies: the ring keeps the slot intact until this rank
        # asks for the next message (~9 us less per 64-sequence step than copying).
        off, end = ints + n, ints + n + 4 * n_tokens
        seq_ids = buf[HEADER_BYTES:per_seq].cast("q")
        i32 = buf[per_seq:ints].cast("i")
        counts, starts, generated = i32[:n], i32[n : 2 * n], i32[2 * n : 3 * n]
        index, table_lens = i32[3 * n : 4 * n], i32[4 * n :]
        sample = buf[ints : ints + n].cast("b")
        tokens = buf[off:end].cast("i")
        off, end = end, end + 4 * n_blocks
        blocks = buf[off:end].cast("i")
        if flags & SAME_SAMPLING:
            if self._sampling is None or n_rec:
                raise FrameError(
                    "frame reuses sampling records this rank never received "
                    "(a frame was lost or read out of order)"
                )
            sampling = self._sampling
        else:
            sampling = self._read_records(buf, end, total, n_rec)
        if n:
            if _frame is None:
                problem = _seq_problem(buf, per_seq, ints, n, n_tokens, n_blocks, len(sampling))
            else:
                problem = _frame.check_seqs(buf, per_seq, n, n_tokens, n_blocks, len(sampling))
            if problem:
                _raise_seq_problem(problem, counts, table_lens, n_tokens, n_blocks, sampling)
        self._sampling = sampling
        return _new_step(
            ident, seq_ids, counts, starts, generated, sample, index, table_lens, tokens,
            blocks, sampling, schema,
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


def _seq_problem(
    buf: Any, per_seq: int, ints: int, n: int, n_tokens: int, n_blocks: int, n_sampling: int
) -> int:
    """The pure-Python ``_frame.check_seqs``: 0, or the code of what is wrong."""
    i32 = buf[per_seq:ints].cast("i")
    # Every int32 per-seq value is >= 0: no little-endian sign byte has bit 7 set.
    if not buf[per_seq:ints].tobytes()[3::4].isascii():
        return 3
    if sum(i32[:n]) != n_tokens:
        return 1
    if sum(i32[4 * n :]) != n_blocks:
        return 2
    if max(i32[3 * n : 4 * n]) >= n_sampling:
        return 4
    if buf[ints : ints + n].tobytes().translate(None, b"\x00\x01"):
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
