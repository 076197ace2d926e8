"""The frame codec: exact round trips, and clear errors for bad or oversized frames."""

from __future__ import annotations

import struct

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rt.core.channel import ControlMessage
from rt.core.errors import RtError
from rt.core.step import SamplingParams, SeqStep, StepMetadata
from tests.channels.strategies import control_messages, evolving_steps, step_metadata

from rt_shm_broadcast import codec, decode
from rt_shm_broadcast.codec import FRAME_ENV, HEADER_BYTES, Encoder, FrameError, FrameTooLarge
from rt_shm_broadcast.decode import Decoder

BUF = 1 << 20
# (offset, struct format, value, what the error names): the header's first fields
DAMAGED_HEADER_START = [
    (0, "4s", b"XXXX", "magic"),
    (4, "H", 99, "layout v99"),
    (6, "H", 99, "step schema v99"),
]
BUILT = codec._frame


@pytest.fixture(autouse=True, params=["c", "python"])
def implementation(request, monkeypatch):
    """Every test runs against the C loops (_frame.c) and their pure-Python twins."""
    if request.param == "c" and BUILT is None:
        pytest.skip("rt_shm_broadcast._frame was not built (no C compiler at install)")
    module = BUILT if request.param == "c" else None
    monkeypatch.setattr(codec, "_frame", module)
    monkeypatch.setattr(decode, "_frame", module)
    return request.param


def _step(n_seqs: int = 2, blocks: int = 4) -> StepMetadata:
    sp = SamplingParams(temperature=0.5, stop=("é",))
    return StepMetadata.from_seqs(
        7, [SeqStep(i, (1, 2), 3, tuple(range(blocks)), True, 1, sp) for i in range(n_seqs)]
    )


@settings(max_examples=100, deadline=None)
@given(steps=evolving_steps())
def test_consecutive_steps_round_trip_exactly(steps):
    enc, dec, buf = Encoder(), Decoder(), bytearray(BUF)
    for step in steps:
        length = enc.encode(step, buf)
        out = dec.decode(memoryview(buf)[:length])
        assert out == step
        assert [type(s) for s in out.seqs] == [SeqStep] * len(step.seqs)


@settings(max_examples=100, deadline=None)
@given(message=control_messages)
def test_control_messages_round_trip(message):
    buf = bytearray(BUF)
    Encoder().encode(message, buf)
    assert Decoder().decode(buf) == message


def test_a_64_sequence_step_is_a_few_copies_and_unchanged_sampling_is_not_resent():
    enc, buf = Encoder(), bytearray(BUF)
    first = enc.encode(_step(64, 128), buf)
    again = enc.encode(_step(64, 128), buf)  # equal sampling records: not sent again
    arrays = 64 * (8 + 5 * 4 + 1) + 4 * (64 * 2 + 64 * 128)
    assert again == HEADER_BYTES + arrays
    assert first > again


@settings(max_examples=100, deadline=None)
@given(step=step_metadata(), cut=st.floats(0, 0.999))
def test_truncated_frames_are_rejected(step, cut):
    buf = bytearray(BUF)
    length = Encoder().encode(step, buf)
    with pytest.raises(FrameError, match="truncated"):
        Decoder().decode(bytes(buf[: int(length * cut)]))


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "match"),
    [
        *DAMAGED_HEADER_START,
        (8, "B", 9, "unknown frame kind"),
        (24, "I", 2**20, "do not add up"),  # n_seqs far beyond the frame
        (28, "I", 1, "do not add up"),  # one token more than the per-seq counts
    ],
)
def test_malformed_headers_name_the_problem(offset, fmt, value, match):
    buf = bytearray(BUF)
    Encoder().encode(_step(), buf)
    struct.pack_into("<" + fmt, buf, offset, value)
    with pytest.raises(FrameError, match=match):
        Decoder().decode(buf)


def test_counts_that_disagree_with_the_arrays_are_rejected():
    buf = bytearray(BUF)
    Encoder().encode(_step(), buf)
    # seq 0's token count (the first entry after the two int64 seq ids) claims 3 tokens.
    struct.pack_into("<i", buf, HEADER_BYTES + 2 * 8, 3)
    with pytest.raises(FrameError, match="per-seq counts"):
        Decoder().decode(buf)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (1, -1, "negative"),  # seq 0's start position
        (3, 5, "sampling index"),  # seq 0's sampling index: only one record was sent
    ],
)
def test_values_a_valid_step_cannot_hold_are_rejected(field, value, match):
    buf = bytearray(BUF)
    Encoder().encode(_step(), buf)
    # seq 0's entry of int32 array k (counts, starts, generated, index, table lengths),
    # each of 2 entries, after the two int64 seq ids
    struct.pack_into("<i", buf, HEADER_BYTES + 2 * 8 + 2 * 4 * field, value)
    with pytest.raises(FrameError, match=match):
        Decoder().decode(buf)


def test_a_sample_flag_other_than_0_or_1_is_rejected():
    buf = bytearray(BUF)
    Encoder().encode(_step(), buf)
    struct.pack_into("<b", buf, HEADER_BYTES + 2 * 8 + 5 * 2 * 4, 7)
    with pytest.raises(FrameError, match="sample flag"):
        Decoder().decode(buf)


def _primed(n_seqs: int = 2) -> tuple[Decoder, bytearray, StepMetadata]:
    """A decoder that has read one frame, and the next frame (same sampling records:
    the usual decode step, which the C path reads) in ``buf``."""
    enc, dec, buf = Encoder(), Decoder(), bytearray(BUF)
    first = _step(n_seqs)
    dec.decode(buf[: enc.encode(first, buf)])
    second = attrs.evolve(_step(n_seqs), step_id=8)
    enc.encode(second, buf)
    return dec, buf, second


def test_the_usual_step_takes_one_c_call_each_way(implementation, monkeypatch):
    if implementation != "c":
        pytest.skip("the C path")
    dec, buf, second = _primed(64)
    monkeypatch.setattr(codec, "_write_step", None)  # the Python writer must not run
    monkeypatch.setattr(Decoder, "_decode", None)  # nor the Python reader
    out = dec.decode(buf)
    assert out == second and isinstance(out.block_ids, memoryview)
    enc, again = Encoder(), bytearray(BUF)
    enc._sampling = second.sampling  # as after the first frame
    length = enc.encode(second, again)
    assert again[:length] == buf[:length]


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "match"),
    [
        *DAMAGED_HEADER_START,
        (9, "B", 3, "unknown frame flags"),
        (28, "I", 1, "do not add up"),
        (36, "I", 1, "never received"),  # "same records" yet a record count
        (HEADER_BYTES + 2 * 8, "i", 3, "per-seq counts"),
        (HEADER_BYTES + 2 * 8 + 2 * 4, "i", -1, "negative"),
        (HEADER_BYTES + 2 * 8 + 6 * 4, "i", 5, "sampling index"),
        (HEADER_BYTES + 2 * 8 + 10 * 4, "b", 7, "sample flag"),
    ],
)
def test_a_malformed_usual_step_gets_the_same_error_either_way(offset, fmt, value, match):
    dec, buf, _ = _primed()
    struct.pack_into("<" + fmt, buf, offset, value)
    with pytest.raises(FrameError, match=match):
        dec.decode(buf)


def test_a_truncated_usual_step_is_rejected():
    dec, buf, second = _primed(64)
    length = HEADER_BYTES + codec.step_body_bytes(64, 128, 256)
    with pytest.raises(FrameError, match="truncated"):
        dec.decode(bytes(buf[: length - 4]))
    assert dec.decode(bytes(buf[:length])) == second


@settings(max_examples=100, deadline=None)
@given(steps=evolving_steps())
def test_c_and_python_encoders_write_the_same_bytes(steps):
    if codec._frame is None:
        return  # the comparison needs the C module: the "c" instance makes it
    frames = []
    for module in (BUILT, None):
        codec._frame = module  # the fixture's monkeypatch restores it
        enc, buf = Encoder(), bytearray(BUF)
        frames.append([bytes(buf[: enc.encode(step, buf)]) for step in steps])
    assert frames[0] == frames[1]


def _outcome(decoder: Decoder, frame: bytes):
    try:
        return decoder.decode(frame)
    except FrameError as e:
        return FrameError, str(e)


@settings(max_examples=300, deadline=None)
@given(
    step=step_metadata(),
    edits=st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.none() | st.floats(0, 1),
)
def test_c_and_python_decoders_agree_on_damaged_usual_steps(step, edits, cut):
    """read_step only accelerates: on any frame, damaged or cut short, it gives what the
    Python decoder gives (the same step, or the same FrameError)."""
    if codec._frame is None:
        return  # the comparison needs the C module: the "c" instance makes it
    enc, buf = Encoder(), bytearray(BUF)
    first = bytes(buf[: enc.encode(step, buf)])
    frame = bytearray(buf[: enc.encode(attrs.evolve(step, step_id=1), buf)])  # same records
    for where, value in edits:
        frame[int(where * len(frame))] = value
    if cut is not None:
        frame = frame[: int(cut * len(frame))]
    results = []
    for module in (BUILT, None):
        decode._frame = module  # the fixture's monkeypatch restores it
        dec = Decoder()
        dec.decode(first)
        results.append(_outcome(dec, bytes(frame)))
    assert results[0] == results[1]


def test_a_delta_without_its_base_is_rejected():
    enc, buf = Encoder(), bytearray(BUF)
    enc.encode(_step(), buf)
    enc.encode(_step(), buf)  # tables unchanged: sent as "same as before"
    with pytest.raises(FrameError, match="never received"):
        Decoder().decode(buf)


def test_oversized_message_names_the_limit_and_the_fix():
    with pytest.raises(FrameTooLarge) as e:
        Encoder().encode(_step(64, 512), bytearray(64 * 1024))
    assert isinstance(e.value, RtError)
    assert "65536 bytes" in str(e.value) and FRAME_ENV in str(e.value)


def test_a_failed_encode_leaves_the_state_unchanged():
    enc, dec = Encoder(), Decoder()
    big, small = bytearray(BUF), bytearray(1024)
    with pytest.raises(FrameTooLarge):
        enc.encode(_step(8, 64), small)
    length = enc.encode(_step(8, 64), big)
    assert dec.decode(big[:length]) == _step(8, 64)


def test_a_step_id_outside_int64_is_a_clear_error():
    step = attrs.evolve(_step(), step_id=2**63)
    with pytest.raises(FrameError, match="step id"):
        Encoder().encode(step, bytearray(BUF))


def test_a_step_not_made_of_arrays_is_refused():
    step = attrs.evolve(_step(), token_ids=[1, 2, 1, 2])
    with pytest.raises(FrameError, match="StepBuilder"):
        Encoder().encode(step, bytearray(BUF))


def test_unknown_message_types_are_refused():
    with pytest.raises(FrameError, match="StepMetadata or ControlMessage"):
        Encoder().encode("hello", bytearray(BUF))  # type: ignore[arg-type]


def test_control_frames_decode_across_schema_versions():
    """A ping from a driver on another schema decodes, so check_ping can explain."""
    buf = bytearray(BUF)
    ping = ControlMessage("ping", schema_version=99, plugins=("shm-broadcast",))
    Encoder().encode(ping, buf)
    assert Decoder().decode(buf) == ping
