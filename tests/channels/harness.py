"""Run a metadata channel across real processes: ranks joined in a gloo group.

Every rank is a spawned child; the test process only talks to them over pipes
(pickle there is the test's own transport, not the channel's). Rank 0 sends what
the test hands it through the channel; every other rank returns what it decoded.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from typing import Any

from rt.core.channel import ControlMessage
from rt.core.step import StepMetadata


def _build(kind: str, group: Any, rank: int, world: int, hostname: str | None) -> Any:
    if kind == "object-list":
        from rt.plugins.object_list import ObjectListChannel

        return ObjectListChannel(group)
    from rt_shm_broadcast.channel import ShmBroadcastChannel

    return ShmBroadcastChannel.open(group, rank, world, hostname=hostname)


def _rank(kind: str, rank: int, world: int, port: int, hostname: str | None, conn: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    group = dist.new_group(backend="gloo")
    channel = _build(kind, group, rank, world, hostname)
    segment = getattr(channel, "segment", None)
    conn.send(("ready", segment))
    try:
        if rank == 0:
            while (message := conn.recv()) is not None:
                try:
                    channel.send(message)
                    conn.send(("ok", None))
                except Exception as e:
                    conn.send(("error", f"{type(e).__name__}: {e}"))
        else:
            while True:
                try:
                    message = channel.recv()
                except Exception as e:
                    conn.send(("error", f"{type(e).__name__}: {e}"))
                    break
                if isinstance(message, StepMetadata):
                    message = message.owned()  # a received step may view the channel's buffer
                conn.send(("ok", message))
                if isinstance(message, ControlMessage) and message.kind == "shutdown":
                    break
    finally:
        channel.close()
        dist.destroy_process_group()


class Ranks:
    """``world`` ranks sharing one channel of ``kind``; ``hostnames[r]`` (shm only)
    pretends rank r runs on another node."""

    def __init__(self, kind: str, world: int = 2, hostnames: list[str] | None = None):
        ctx = mp.get_context("spawn")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.conns, self.procs = [], []
        for r in range(world):
            parent, child = ctx.Pipe()
            host = hostnames[r] if hostnames else None
            p = ctx.Process(target=_rank, args=(kind, r, world, port, host, child), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)
        self.segment = [self._get(c, 120) for c in self.conns][0]

    @staticmethod
    def _get(conn: Any, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise TimeoutError("a rank did not answer")
        status, value = conn.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def roundtrip(self, message: Any, timeout: float = 60) -> list[Any]:
        """Send ``message`` from rank 0; return what ranks 1.. decoded."""
        self.conns[0].send(message)
        self._get(self.conns[0], timeout)
        return [self._get(c, timeout) for c in self.conns[1:]]

    def send_expecting_error(self, message: Any, timeout: float = 60) -> str:
        self.conns[0].send(message)
        if not self.conns[0].poll(timeout):
            raise TimeoutError("rank 0 did not answer")
        status, value = self.conns[0].recv()
        assert status == "error", "the send should have failed"
        return value

    def close(self) -> None:
        try:
            self.roundtrip(ControlMessage("shutdown"), timeout=30)
            self.conns[0].send(None)
        finally:
            for p in self.procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
