"""A fixed binary layout for step metadata and control messages: no pickle.

A frame is a header and packed little-endian arrays, written in place into a
buffer the caller owns (a ring-buffer slot or a preallocated tensor)::

    header   magic "RTSB", layout version, step schema version, kind, flags,
             step id / seq id, total bytes, counts (seqs, tokens, block ids,
             sampling records, their bytes)
    step     the step's arrays, each copied whole (one memcpy per array):
             seq_ids q[n] | token_counts i[n] | start_positions i[n]
             | num_generated i[n] | sampling_index i[n] | table_lens i[n]
             | sample b[n], zero-padded to a multiple of 8 | token_ids i[tokens]
             | block_ids i[blocks]
             | sampling records (u32 length + fixed part, stop ids, logit_bias
               pairs, stop strings)
             The 48-byte header and the padding start every array at a multiple of
             its item size, so a reader's views are slices of the buffer cast once.
    control  kind code in ``n_seqs``, seq id in the id field;
             body: schema_version i, then the plugin names as u32 length + UTF-8

Because :class:`~rt.core.step.StepMetadata` is columnar, encoding and decoding cost
the same handful of copies for 1 sequence or 64: no per-sequence Python work. When
the package was built with a compiler, the usual step (well-formed, sampling records
unchanged) is written and read by one C call each (``_frame.c``); everything else,
and every error message, goes through the Python below, which defines the layout. The
one piece of state: when a step's sampling records equal the previous frame's (the
usual decode step), the frame sets ``SAME_SAMPLING`` and carries none, and the
decoder reuses its previous tuple. The channel delivers every frame to every reader
in order, so both sides' state stays equal; each side commits it only once a frame
is fully encoded / decoded.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
from rt.core.channel import ControlMessage, Message
from rt.core.errors import RtError
from rt.core.step import STEP_SCHEMA_VERSION, SamplingParams, StepMetadata

try:  # the per-step loops in C, built with the package when a compiler was there
    from rt_shm_broadcast import _frame
except ImportError:  # pragma: no cover - depends on the build
    _frame = None

MAGIC = b"RTSB"
LAYOUT_VERSION = 3
FRAME_ENV = "RT_SHM_BROADCAST_FRAME_BYTES"

_HEADER = struct.Struct("<4sHHBBHqIIIIII4x")  # 48 bytes: arrays start 8-aligned
HEADER_BYTES = _HEADER.size
KIND_STEP, KIND_CONTROL, KIND_SPILL = 1, 2, 3
SAME_SAMPLING = 1  # header flag: the step's sampling records are the previous frame's
_CONTROL_KINDS = ("ping", "shutdown", "abort", "heartbeat")
# The typecodes of the step's arrays, in frame order: seq_ids, token_counts,
# start_positions, num_generated, sampling_index, table_lens, sample, token_ids, block_ids.
STEP_TYPECODES = ("q", "i", "i", "i", "i", "i", "b", "i", "i")
# temp, top_p, top_k, seed, max_tokens, logprobs, flags, n_stop_ids, n_stop,
# presence_penalty, frequency_penalty, repetition_penalty, min_p, min_tokens, n_logit_bias,
# prompt_logprobs (-1: None)
_SAMPLING = struct.Struct("<ddqqqiBIIddddqIi")
_BIAS = struct.Struct("<id")  # one logit_bias entry: token id, bias
_U32 = struct.Struct("<I")
_HAS_SEED, _IGNORE_EOS, _WANT_LOGPROBS = 1, 2, 4
_CACHE_LIMIT = 4096


def _check_arrays(step: StepMetadata, arrays: tuple, n: int) -> None:
    """Raise FrameError unless the step's arrays have the layout's typecodes and the
    per-sequence ones all hold ``n`` entries."""
    codes = tuple(getattr(a, "typecode", None) or getattr(a, "format", None) for a in arrays)
    if codes != STEP_TYPECODES:
        raise FrameError(
            f"step {step.step_id}: its fields must be arrays of typecodes "
            f"{STEP_TYPECODES}, got {codes}: build steps with StepBuilder or "
            "StepMetadata.from_seqs"
        )
    if any(len(a) != n for a in arrays[:7]):
        raise FrameError(f"step {step.step_id}: its per-sequence arrays differ in length")


class FrameError(RtError):
    """A frame that cannot be decoded (bad magic, other version, truncated, bad counts)
    or a message that cannot be encoded (a value outside the layout's range)."""


class FrameTooLarge(FrameError):
    """A message larger than the channel's fixed frame size; ``need``: its bytes."""

    def __init__(self, message: str, need: int):
        super().__init__(message)
        self.need = need


@attrs.frozen
class Spill:
    """A spill frame's message: the next frame, ``length`` bytes, too large for a slot,
    comes over a gloo broadcast instead (see ``channel.py``)."""

    length: int


def encode_spill(length: int, buf: Any) -> int:
    """Write a spill frame announcing a ``length``-byte frame; return its length."""
    _HEADER.pack_into(
        buf, 0, MAGIC, LAYOUT_VERSION, STEP_SCHEMA_VERSION, KIND_SPILL, 0, 0, length,
        HEADER_BYTES, 0, 0, 0, 0, 0,
    )  # fmt: skip
    return HEADER_BYTES


def _too_large(what: str, need: int, limit: int) -> FrameTooLarge:
    return FrameTooLarge(
        f"{what} needs {need} bytes but the shm-broadcast frame size is {limit} bytes: "
        f"raise it with {FRAME_ENV}={max(need, limit * 2)} (set on the driver)",
        need,
    )


def encode_sampling(sp: SamplingParams) -> bytes:
    """One sampling record: u32 body length, then the fixed part, stop ids, logit_bias
    pairs, stop strings."""
    flags = (
        (_HAS_SEED if sp.seed is not None else 0)
        | (_IGNORE_EOS if sp.ignore_eos else 0)
        | (_WANT_LOGPROBS if sp.want_logprobs else 0)
    )
    parts = [
        _SAMPLING.pack(
            sp.temperature,
            sp.top_p,
            sp.top_k,
            sp.seed if sp.seed is not None else 0,
            sp.max_tokens,
            sp.logprobs,
            flags,
            len(sp.stop_token_ids),
            len(sp.stop),
            sp.presence_penalty,
            sp.frequency_penalty,
            sp.repetition_penalty,
            sp.min_p,
            sp.min_tokens,
            len(sp.logit_bias),
            -1 if sp.prompt_logprobs is None else sp.prompt_logprobs,
        ),
        struct.pack(f"<{len(sp.stop_token_ids)}i", *sp.stop_token_ids),
        b"".join(_BIAS.pack(t, b) for t, b in sp.logit_bias),
    ]
    for s in sp.stop:
        raw = s.encode("utf-8")
        parts += [_U32.pack(len(raw)), raw]
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def decode_sampling(body: bytes) -> SamplingParams:
    (temp, top_p, top_k, seed, max_tokens, logprobs, flags, n_ids, n_stop, presence,
     frequency, repetition, min_p, min_tokens, n_bias, prompt_logprobs,
     ) = _SAMPLING.unpack_from(body, 0)  # fmt: skip
    off = _SAMPLING.size
    stop_ids = struct.unpack_from(f"<{n_ids}i", body, off)
    off += 4 * n_ids
    bias = [_BIAS.unpack_from(body, off + _BIAS.size * k) for k in range(n_bias)]
    off += _BIAS.size * n_bias
    stops = []
    for _ in range(n_stop):
        (length,) = _U32.unpack_from(body, off)
        if off + 4 + length > len(body):
            raise FrameError("sampling record truncated: a stop string runs past its record")
        stops.append(body[off + 4 : off + 4 + length].decode("utf-8"))
        off += 4 + length
    if off != len(body):
        raise FrameError(f"sampling record has {len(body) - off} stray bytes")
    return SamplingParams(
        temperature=temp,
        top_p=top_p,
        top_k=top_k,
        seed=seed if flags & _HAS_SEED else None,
        max_tokens=max_tokens,
        stop=tuple(stops),
        stop_token_ids=stop_ids,
        ignore_eos=bool(flags & _IGNORE_EOS),
        want_logprobs=bool(flags & _WANT_LOGPROBS),
        logprobs=logprobs,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        min_p=min_p,
        min_tokens=min_tokens,
        logit_bias=bias,
        prompt_logprobs=None if prompt_logprobs < 0 else prompt_logprobs,
    )


class Encoder:
    """Writes messages into caller-owned buffers. One per writer; not thread-safe."""

    def __init__(self) -> None:
        self._sampling: tuple[SamplingParams, ...] | None = None  # sent in the last frame
        self._records: dict[int, tuple[SamplingParams, bytes]] = {}  # id(params) -> bytes

    def _record(self, sp: SamplingParams) -> bytes:
        hit = self._records.get(id(sp))
        if hit is not None and hit[0] is sp:
            return hit[1]
        if len(self._records) >= _CACHE_LIMIT:
            self._records.clear()
        raw = encode_sampling(sp)
        self._records[id(sp)] = (sp, raw)  # holding sp keeps its id from being reused
        return raw

    def encode(self, message: Message, buf: memoryview | bytearray) -> int:
        """Write ``message`` at the start of ``buf``; return the frame's length."""
        if isinstance(message, StepMetadata):
            return self._encode_step(message, buf)
        if isinstance(message, ControlMessage):
            return _encode_control(message, buf)
        raise FrameError(
            f"cannot encode {type(message).__name__}: send StepMetadata or ControlMessage"
        )

    def _encode_step(self, step: StepMetadata, buf: Any) -> int:
        sampling = step.sampling
        same = self._sampling is not None and (
            sampling is self._sampling or sampling == self._sampling
        )
        records = b"" if same else b"".join(map(self._record, sampling))
        n_records = 0 if same else len(sampling)
        flags = SAME_SAMPLING if same else 0
        end = -1
        if _frame is not None:
            end = _frame.write_step(buf, step, flags, n_records, len(records))
        if end < 0:  # not the C call's case: write (or refuse) it here
            end = _write_step(step, buf, flags, n_records, len(records))
        total = end + len(records)
        buf[end:total] = records
        self._sampling = sampling
        return total


def step_body_bytes(n: int, n_tokens: int, n_blocks: int) -> int:
    """Bytes of a step's arrays in the frame, padding included."""
    return 29 * n + _pad8(n) + 4 * (n_tokens + n_blocks)


def _pad8(n: int) -> int:
    return -n % 8


def _write_step(step: StepMetadata, buf: Any, flags: int, n_records: int, record_bytes: int) -> int:
    """Write the header and arrays of ``step``; return where its sampling records go."""
    arrays = (
        step.seq_ids, step.token_counts, step.start_positions, step.num_generated,
        step.sampling_index, step.table_lens, step.sample, step.token_ids, step.block_ids,
    )  # fmt: skip
    try:
        n, n_tokens, n_blocks = len(arrays[0]), len(arrays[7]), len(arrays[8])
    except TypeError:
        n = -1
    _check_arrays(step, arrays, n)
    end = HEADER_BYTES + step_body_bytes(n, n_tokens, n_blocks)
    if end + record_bytes > len(buf):
        raise _too_large(
            f"step {step.step_id} ({n} seqs, {n_blocks} block ids)", end + record_bytes, len(buf)
        )
    try:
        _HEADER.pack_into(
            buf, 0, MAGIC, LAYOUT_VERSION, step.version, KIND_STEP, flags, 0, step.step_id,
            end + record_bytes, n, n_tokens, n_blocks, n_records, record_bytes,
        )  # fmt: skip
    except struct.error as e:
        raise FrameError(f"step id {step.step_id} does not fit the frame ({e})") from None
    # One join of the small arrays, then the two long ones straight into the frame:
    # a copy per array costs ~0.3 us of Python, a byte ~0.03 ns.
    head = b"".join(arrays[:7]) + bytes(_pad8(n))
    off = HEADER_BYTES + len(head)
    buf[HEADER_BYTES:off] = head
    buf[off : off + 4 * n_tokens] = memoryview(arrays[7]).cast("B")
    off += 4 * n_tokens
    buf[off:end] = memoryview(arrays[8]).cast("B")
    return end


def _encode_control(msg: ControlMessage, buf: Any) -> int:
    names = [p.encode("utf-8") for p in msg.plugins]
    total = HEADER_BYTES + 8 + sum(4 + len(n) for n in names)
    if total > len(buf):
        raise _too_large(f"control message {msg.kind!r}", total, len(buf))
    code = _CONTROL_KINDS.index(msg.kind)
    _HEADER.pack_into(
        buf, 0, MAGIC, LAYOUT_VERSION, STEP_SCHEMA_VERSION, KIND_CONTROL, 0, 0, msg.seq_id,
        total, code, 0, 0, 0, 0,
    )  # fmt: skip
    off = HEADER_BYTES
    struct.pack_into("<iI", buf, off, msg.schema_version, len(names))
    off += 8
    for raw in names:
        _U32.pack_into(buf, off, len(raw))
        buf[off + 4 : off + 4 + len(raw)] = raw
        off += 4 + len(raw)
    return total


def frame_header(buf: Any) -> tuple:
    """Check and return the header fields of the frame at the start of ``buf``."""
    if len(buf) < HEADER_BYTES:
        raise FrameError(
            f"frame truncated: {len(buf)} bytes, less than the {HEADER_BYTES}-byte header"
        )
    fields = _HEADER.unpack_from(buf, 0)
    magic, layout, schema, kind, _, _, _, total = fields[:8]
    if magic != MAGIC:
        raise FrameError(f"not an shm-broadcast frame: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if layout != LAYOUT_VERSION:
        raise FrameError(
            f"frame layout v{layout}, this rank reads v{LAYOUT_VERSION}: "
            "install the same rt-shm-broadcast version on every rank"
        )
    if kind == KIND_STEP and schema != STEP_SCHEMA_VERSION:
        raise FrameError(
            f"frame carries step schema v{schema}, this rank speaks v{STEP_SCHEMA_VERSION}: "
            "install the same rt version on every rank"
        )
    if kind not in (KIND_STEP, KIND_CONTROL, KIND_SPILL):
        raise FrameError(f"unknown frame kind {kind}")
    if total > len(buf):
        raise FrameError(f"frame truncated: header says {total} bytes, the buffer holds {len(buf)}")
    return fields
