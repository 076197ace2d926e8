"""The built-in ``object-list`` channel round-trips any valid message over real gloo."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.channels.harness import Ranks
from tests.channels.strategies import control_messages, evolving_steps


@pytest.fixture(scope="module")
def ranks():
    r = Ranks("object-list", world=2)
    yield r
    r.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=evolving_steps())
def test_steps_round_trip_exactly(ranks, steps):
    for step in steps:
        assert ranks.roundtrip(step) == [step]


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=control_messages)
def test_control_messages_round_trip(ranks, message):
    if message.kind == "shutdown":
        message = type(message)("abort", seq_id=message.seq_id)
    assert ranks.roundtrip(message) == [message]
