"""The metadata channel: how the driver tells every TP rank what to run each step.

``rt_metadata_broadcaster`` returns a :class:`MetadataChannel`. The driver calls
``send`` once per step; every other rank calls ``recv`` in its worker loop. Besides
:class:`~rt.core.step.StepMetadata` a channel carries :class:`ControlMessage`s
(shutdown, abort, ping, heartbeat). A channel's name is its plugin's name (``object-list``).
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import attrs
from rt.core.step import STEP_SCHEMA_VERSION, StepMetadata

ControlKind = Literal["ping", "shutdown", "abort", "heartbeat"]


@attrs.frozen
class ControlMessage:
    """``ping`` carries the schema version and the plugin set, for the startup
    round trip; ``abort`` names a sequence; ``shutdown`` ends the worker loop;
    ``heartbeat`` carries nothing: an idle driver sends it so that ranks waiting for
    the next step never reach a channel's or a collective's timeout."""

    kind: ControlKind
    seq_id: int = -1
    schema_version: int = STEP_SCHEMA_VERSION
    plugins: tuple[str, ...] = ()


Message = StepMetadata | ControlMessage


@runtime_checkable
class MetadataChannel(Protocol):
    name: str

    def send(self, message: Message) -> None:
        """Driver only: deliver ``message`` to every other rank."""
        ...

    def recv(self) -> Message:
        """Ranks other than the driver: block until the next message.

        A channel may decode a step in place: its arrays are then views of the
        channel's buffer, valid until the next ``recv``. Use ``step.owned()`` to keep one.
        """
        ...

    def close(self) -> None: ...


def check_ping(ping: Message, plugins: tuple[str, ...], rank: int) -> str | None:
    """What a rank finds wrong with the driver's startup ping (None: all agree)."""
    if not isinstance(ping, ControlMessage) or ping.kind != "ping":
        return f"rank {rank} expected a ping, got {type(ping).__name__}"
    if ping.schema_version != STEP_SCHEMA_VERSION:
        return (
            f"rank {rank} speaks step schema v{STEP_SCHEMA_VERSION}, "
            f"the driver v{ping.schema_version}: install the same rt version everywhere"
        )
    if tuple(sorted(ping.plugins)) != tuple(sorted(plugins)):
        return (
            f"rank {rank} has plugins {sorted(plugins)}, the driver {sorted(ping.plugins)}: "
            "every rank must select the same plugins"
        )
    return None
