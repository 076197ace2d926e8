"""Hypercorn in its own thread and event loop, bound before the stage returns.

The listening socket is bound and listening in ``start()``, on the stage's
thread, so the port is known (``port=0`` picks a free one) and connections made
from then on queue in the kernel until the loop accepts them.

Shutdown (``stop``): refuse new API requests (503, and ``/ready`` 503, so a load
balancer moves on), let requests in flight finish for up to ``shutdown_grace_s``,
abort the rest in the engine (their streams end at once), then stop accepting
connections and stop the server.

Engine death is final: ``wait()`` notices it within ``DEATH_POLL_S``; by then the
engine has failed every request in flight (their streams end with an error event),
and with ``server.exit_on_engine_death`` (the default) ``wait()`` stops the server
and returns ``EXIT_ENGINE_DEAD``, so a supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from typing import Any

from rt.core.config import ServerConfig
from rt.core.engine import engine_death
from rt.core.errors import ConfigError, RtError
from rt.plugins.http.app import build_app
from rt.plugins.http.state import ServerState

log = logging.getLogger("rt.http")
STARTUP_TIMEOUT_S = 30.0
DEATH_POLL_S = 0.2
EXIT_ENGINE_DEAD = 3  # the process's exit code after an engine death
# After a death the failed requests' responses only have to be written out.
DEATH_GRACE_S = 1.0


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as e:  # a port in use, an address not on this machine: the user's to fix
        raise ConfigError(
            f"cannot listen on {host}:{port}: {e}; pick another address with "
            "--host/--port (server.host, server.port; port 0 picks a free one)"
        ) from None
    return sock


class HttpServer:
    """The handle ``rt_frontend`` returns: ``port``, ``wait()``, ``stop()``."""

    def __init__(self, config: ServerConfig, runtime: Any):
        self.config = config
        self.runtime = runtime
        self.state = ServerState(config, runtime)
        self.host = config.host
        self.port = 0
        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        sock = _listen(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        started = threading.Event()
        app = build_app(self.state, started)
        self._thread = threading.Thread(
            target=self._serve, args=(app, sock, started), name="rt-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not started.wait(0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RtError(f"the HTTP server on {self.url} did not start; see the log above")

    def _serve(self, app: Any, sock: socket.socket, started: threading.Event) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config
        from rt.plugins.http.protocol_errors import install

        install()  # OpenAI error bodies on the 400 and 431 Hypercorn answers itself
        hc = Config()
        hc.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
        hc.graceful_timeout = self.config.shutdown_grace_s + 5.0
        hc.keep_alive_timeout = self.config.keep_alive_timeout_s  # also the headers' deadline
        hc.accesslog = None
        hc.errorlog = log
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            asyncio.set_event_loop(loop)
            self._shutdown = asyncio.Event()
            loop.run_until_complete(serve(app, hc, shutdown_trigger=self._shutdown.wait))
            # Hypercorn leaves connections past the graceful timeout running.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            log.exception("the HTTP server stopped with an error")
        finally:
            loop.close()
            self._stopped.set()

    def wait(self) -> int:
        """Serve until SIGTERM/SIGINT (or ``stop()``), then shut down gracefully.

        Returns 0 after a requested stop, 1 if the server died on its own,
        ``EXIT_ENGINE_DEAD`` once the engine died (unless ``exit_on_engine_death`` is
        false: then it serves 503s until a signal). A second signal cuts the grace
        period short.
        """
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: Any) -> None:
            if self._stop_requested.is_set():
                self._force.set()
            self._stop_requested.set()

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        early = self.runtime.services.get("http.signals")
        if early is not None and early.received.is_set():
            self._stop_requested.set()  # SIGTERM came between ready and now
        reported = False
        try:
            while not self._stop_requested.wait(DEATH_POLL_S):
                if self._stopped.is_set():
                    log.error("the HTTP server stopped unexpectedly")
                    return 1
                dead = engine_death(self.runtime)
                if dead is None or reported:
                    continue
                reported = True
                if not self.config.exit_on_engine_death:
                    log.error("%s; serving 503 until stopped (exit_on_engine_death)", dead)
                    continue
                log.error("%s; exiting with code %d", dead, EXIT_ENGINE_DEAD)
                self.stop(grace_s=DEATH_GRACE_S)
                return EXIT_ENGINE_DEAD
            self.stop()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace_s: float | None = None) -> None:
        """Drain and stop; safe to call twice and from any thread."""
        self._stop_requested.set()
        with self._stop_lock:
            if self._stopped.is_set() or self._loop is None:
                return
            grace = self.config.shutdown_grace_s if grace_s is None else grace_s
            # New requests get a 503 that says why, not a refused connection, until
            # the requests in flight are done.
            self.state.draining = True
            self._call_in_loop(self.state.closing.set)
            deadline = time.monotonic() + grace
            while self.state.inflight and time.monotonic() < deadline:
                if self._force.wait(0.05):
                    break
            left = list(self.state.inflight.values())
            if left:
                log.warning("aborting %d request(s) still running after %.1fs", len(left), grace)
            for stream in left:
                stream.engine.abort(stream.request_id)
            self._call_in_loop(self._shutdown.set)  # stop accepting connections
            assert self._thread is not None
            self._thread.join(timeout=grace + 10.0)

    def _call_in_loop(self, fn: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop already closed
            pass
