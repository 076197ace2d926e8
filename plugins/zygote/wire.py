"""The zygote's messages and its peers' credentials.

A message is a JSON object after its length (4 bytes, big-endian), sent over a Unix
stream socket; file descriptors travel with its first bytes (``SCM_RIGHTS``). Every
connection carries one request and one reply. Both ends check who the other is
(``SO_PEERCRED``): the zygote serves its own user only, and a caller talks only to a
zygote of its own user.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

LENGTH = struct.Struct("!I")
CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_FDS = 64
MAX_BYTES = 16 << 20
_FIRST_READ = 1 << 16


class WireError(Exception):
    """A malformed message, or too many file descriptors with it."""


class PeerCredentials(NamedTuple):
    """A peer's ``struct ucred`` (a named tuple: the launcher imports this module on
    every ``rt serve``, before anything else, and attrs costs ~15 ms to import)."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Who is at the other end of a connected Unix socket, as the kernel saw it at
    ``connect``/``listen`` time (it cannot be forged by the peer)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, CREDENTIALS.size)
    return PeerCredentials(*CREDENTIALS.unpack(raw))


def foreign_peer(peer: PeerCredentials, uid: int | None = None) -> str | None:
    """Why ``peer`` may not be served (it runs as another user), or None.

    Example: ``foreign_peer(PeerCredentials(pid=7, uid=1001, gid=1001), uid=1000)``
    says that uid 1001 is not the zygote's user."""
    own = os.geteuid() if uid is None else uid
    if peer.uid == own:
        return None
    return f"peer pid {peer.pid} runs as uid {peer.uid}; this zygote serves uid {own} only"


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    payload = LENGTH.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], list(fds))
        if sent < len(payload):  # never an empty send: the peer may have answered and gone
            sock.sendall(payload[sent:])
    else:
        sock.sendall(payload)


def recv_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it (the caller owns them)."""
    if max_fds:
        first, fds, flags, _ = socket.recv_fds(sock, _FIRST_READ, max_fds)
    else:
        first, fds, flags = sock.recv(_FIRST_READ), [], 0
    try:
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            raise WireError(f"more than {max_fds} file descriptors came with the message")
        data = _read_rest(sock, first)
        message = json.loads(data)
        if not isinstance(message, dict):
            raise WireError("a message is a JSON object")
        return message, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _read_rest(sock: socket.socket, data: bytes) -> bytes:
    if not data:
        raise EOFError("the peer closed the connection without a message")
    while len(data) < LENGTH.size:
        more = sock.recv(LENGTH.size - len(data))
        if not more:
            raise EOFError("the connection closed inside a message")
        data += more
    (length,) = LENGTH.unpack_from(data)
    if length > MAX_BYTES:
        raise WireError(f"a message of {length} bytes is past the limit of {MAX_BYTES}")
    body = bytearray(data[LENGTH.size :])
    while len(body) < length:
        more = sock.recv(min(length - len(body), _FIRST_READ))
        if not more:
            raise EOFError("the connection closed inside a message")
        body += more
    if len(body) != length:
        raise WireError("more bytes than the message's length")
    return bytes(body)
