"""``ShmBroadcastChannel`` across real processes: the ring on one node, the gloo
frame for ranks that report another hostname, and segment clean-up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from rt.core.step import SamplingParams, SeqStep, StepMetadata
from tests.channels.harness import Ranks
from tests.channels.strategies import control_messages, evolving_steps

from rt_shm_broadcast.ring import SHM_DIR, Ring, remove_stale

FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def shm_pair():
    ranks = Ranks("shm-broadcast", world=2)
    yield ranks
    ranks.close()


@pytest.fixture(scope="module")
def mixed():
    """Rank 1 shares the driver's node (ring), rank 2 claims another (gloo)."""
    ranks = Ranks("shm-broadcast", world=3, hostnames=["node-a", "node-a", "node-b"])
    yield ranks
    ranks.close()


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURE_OK)
@given(steps=evolving_steps())
def test_steps_round_trip_exactly_through_the_ring(shm_pair, steps):
    for step in steps:
        assert shm_pair.roundtrip(step) == [step]


@settings(max_examples=10, deadline=None, suppress_health_check=FIXTURE_OK)
@given(message=control_messages)
def test_control_messages_round_trip(shm_pair, message):
    if message.kind == "shutdown":
        message = type(message)("abort", seq_id=message.seq_id)
    assert shm_pair.roundtrip(message) == [message]


def test_more_messages_than_slots_keep_their_order(shm_pair):
    sp = SamplingParams()
    for i in range(40):  # 5 laps of the 8-slot ring
        step = StepMetadata.from_seqs(i, [SeqStep(1, (i,), i, tuple(range(i % 5)), True, i, sp)])
        assert shm_pair.roundtrip(step) == [step]


def _huge_step(step_id: int) -> StepMetadata:
    # 80 sequences with 4000-block tables: 1.3 MB, past the 1 MiB frame
    sp = SamplingParams(stop=("x" * 1000,))
    return StepMetadata.from_seqs(
        step_id, [SeqStep(i, (1,), 0, tuple(range(4000)), True, 0, sp) for i in range(80)]
    )


def test_a_step_larger_than_a_slot_spills_over_gloo_and_the_ring_goes_on(shm_pair):
    # A batch of long contexts (or prompts) can outgrow the frame size chosen at start;
    # it comes over a gloo broadcast instead of failing the step (and the engine).
    huge = _huge_step(1)
    assert shm_pair.roundtrip(huge) == [huge]
    assert shm_pair.roundtrip(huge) == [huge]  # equal sampling: the usual flag, spilled
    sp = SamplingParams()
    small = StepMetadata.from_seqs(2, [SeqStep(1, (1,), 0, (1,), True, 0, sp)])
    for _ in range(10):  # more laps of the ring than it has slots
        assert shm_pair.roundtrip(small) == [small]


def test_ring_and_gloo_readers_both_get_a_spilled_step(mixed):
    huge = _huge_step(3)
    assert mixed.roundtrip(huge) == [huge, huge]


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK)
@given(steps=evolving_steps())
def test_ring_and_gloo_readers_decode_the_same_frames(mixed, steps):
    for step in steps:
        assert mixed.roundtrip(step) == [step, step]


def test_segment_is_named_per_instance(shm_pair):
    """Driver pid + random suffix. (The plugin unlinks the name after its startup
    round trip; this harness opens the channel without the plugin, so it is there.)"""
    assert shm_pair.segment.startswith(f"rt-shm-{shm_pair.procs[0].pid}-")
    assert os.path.exists(os.path.join(SHM_DIR, shm_pair.segment))


def test_stale_segments_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f"rt-shm-{dead.stdout.strip()}-deadbeef"
    live = tmp_path / f"rt-shm-{os.getpid()}-cafef00d"
    other = tmp_path / "not-ours"
    for f in (stale, live, other):
        f.write_bytes(b"x")
    assert remove_stale(str(tmp_path)) == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()


def test_closing_the_writer_unlinks_and_wakes_readers(tmp_path):
    ring = Ring.create(1, 2, 4096, shm_dir=str(tmp_path))
    path = tmp_path / ring.name
    assert path.exists()
    reader = Ring.attach(ring.name, 0, shm_dir=str(tmp_path))
    ring.close()
    assert not path.exists()
    from rt_shm_broadcast.ring import ChannelClosed

    with pytest.raises(ChannelClosed):
        reader.receive(bytes)
