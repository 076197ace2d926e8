"""The reading half of the frame layout in ``codec.py``: frames back into the exact records."""

from __future__ import annotations

import struct
from typing import Any

from rt.core.channel import ControlMessage, Message
from rt.core.step import SamplingParams, SeqStep, StepMetadata

from rt_shm_broadcast.codec import (
    _CACHE_LIMIT,
    _CONTROL_KINDS,
    _PER_SEQ_BYTES,
    _SEQ_SETTERS,
    _U32,
    HEADER_BYTES,
    KIND_CONTROL,
    FrameError,
    decode_sampling,
    frame_header,
)


class Decoder:
    """Reads the frames one ``Encoder`` wrote, in the order it wrote them."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple] = {}
        self._sampling: dict[int, SamplingParams] = {}
        # Record bytes -> params: a sequence's params are decoded (and validated) once.
        self._records: dict[bytes, SamplingParams] = {}

    def decode(self, buf: Any) -> Message:
        """Decode the frame at the start of ``buf`` (it may be longer than the frame)."""
        fields = frame_header(buf)
        _, _, schema, kind, _, _, ident, total, n, n_tokens, n_blocks, n_rec, rec_bytes = fields
        if kind == KIND_CONTROL:
            return _decode_control(buf, ident, n, total)
        body = n * _PER_SEQ_BYTES + 4 * (n_tokens + n_blocks)
        if HEADER_BYTES + body + rec_bytes != total:
            raise FrameError(
                f"frame counts ({n} seqs, {n_tokens} tokens, {n_blocks} block ids, "
                f"{rec_bytes} sampling bytes) do not add up to its {total} bytes"
            )
        values = struct.unpack_from(f"<{n}q{5 * n}i{n}?{n_tokens + n_blocks}i", buf, HEADER_BYTES)
        records = self._read_records(buf, HEADER_BYTES + body, total, n_rec)
        flat = values[7 * n :]
        prev_tables, prev_sampling = self._tables, self._sampling
        tables: dict[int, tuple] = {}
        sampling: dict[int, SamplingParams] = {}
        seqs: list[SeqStep] = []
        setters, new = _SEQ_SETTERS, object.__new__
        if setters is not None:
            set_id, set_tokens, set_start, set_table, set_sample, set_ngen, set_sampling = setters
        tpos, bpos = 0, n_tokens
        for sid, start, k, ngen, length, si, sample in zip(
            values[:n],
            values[n : 2 * n],
            values[2 * n : 3 * n],
            values[3 * n : 4 * n],
            values[4 * n : 5 * n],
            values[5 * n : 6 * n],
            values[6 * n : 7 * n],
            strict=True,
        ):
            if k < 0 or length < -1:
                raise FrameError(f"seq {sid}: negative count ({k} tokens, table length {length})")
            tokens = flat[tpos : tpos + k]
            tpos += k
            if length == -1:
                table = prev_tables.get(sid)
                if table is None:
                    raise FrameError(
                        f"seq {sid} reuses a block table this rank never received "
                        "(a frame was lost or read out of order)"
                    )
            else:
                table = flat[bpos : bpos + length]
                bpos += length
            if si == -1:
                sp = prev_sampling.get(sid)
                if sp is None:
                    raise FrameError(f"seq {sid} reuses sampling params this rank never received")
            elif 0 <= si < len(records):
                sp = records[si]
            else:
                raise FrameError(f"seq {sid}: sampling index {si} of {len(records)} records")
            tables[sid] = table
            sampling[sid] = sp
            if setters is None:
                seqs.append(SeqStep(sid, tokens, start, table, sample, ngen, sp))
                continue
            obj = new(SeqStep)  # the fast path of _new_seq_step, inlined: ~64 calls a step
            set_id(obj, sid)
            set_tokens(obj, tokens)
            set_start(obj, start)
            set_table(obj, table)
            set_sample(obj, sample)
            set_ngen(obj, ngen)
            set_sampling(obj, sp)
            seqs.append(obj)
        if tpos != n_tokens or bpos != n_tokens + n_blocks:
            raise FrameError(
                f"per-seq counts cover {tpos} tokens and {bpos - n_tokens} block ids, "
                f"the header says {n_tokens} and {n_blocks}"
            )
        if len(tables) != n:
            raise FrameError("frame lists a seq_id twice")
        self._tables, self._sampling = tables, sampling
        return StepMetadata(step_id=ident, seqs=tuple(seqs), version=schema)

    def _read_records(self, buf: Any, off: int, end: int, count: int) -> list[SamplingParams]:
        out = []
        for _ in range(count):
            if off + 4 > end:
                raise FrameError("sampling records truncated")
            (length,) = _U32.unpack_from(buf, off)
            if off + 4 + length > end:
                raise FrameError(f"sampling record of {length} bytes runs past the frame")
            key = bytes(buf[off + 4 : off + 4 + length])
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
            off += 4 + length
        if off != end:
            raise FrameError(f"{end - off} stray bytes after the sampling records")
        return out


def _decode_control(buf: Any, seq_id: int, code: int, total: int) -> ControlMessage:
    if code >= len(_CONTROL_KINDS):
        raise FrameError(f"unknown control kind code {code}")
    if total < HEADER_BYTES + 8:
        raise FrameError(f"control frame of {total} bytes is shorter than its fixed part")
    schema, count = struct.unpack_from("<iI", buf, HEADER_BYTES)
    off = HEADER_BYTES + 8
    names = []
    for _ in range(count):
        if off + 4 > total:
            raise FrameError("control frame truncated in its plugin names")
        (length,) = _U32.unpack_from(buf, off)
        if off + 4 + length > total:
            raise FrameError("control frame truncated in its plugin names")
        try:
            names.append(bytes(buf[off + 4 : off + 4 + length]).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise FrameError(f"control frame plugin name is not UTF-8: {e}") from None
        off += 4 + length
    if off != total:
        raise FrameError(f"{total - off} stray bytes after the control message")
    return ControlMessage(
        _CONTROL_KINDS[code], seq_id=seq_id, schema_version=schema, plugins=tuple(names)
    )
