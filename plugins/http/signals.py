"""SIGTERM before ``wait()``: the gap between ``runtime.ready`` and serving.

``rt serve`` reports ready, prints the timeline and only then calls the server's
``wait()``, which installs the real handlers. A SIGTERM in that gap would kill
the process without cleanup (worker ranks, shared memory), so ``rt_configure``
installs this handler first, on the main thread: during startup it aborts
startup the way Ctrl-C does (``rt serve`` then shuts down in its ``finally``);
once ready it only records the signal, and ``wait()`` stops gracefully at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

SERVICE = "http.signals"


class EarlySigterm:
    def __init__(self, runtime: Any):
        self.runtime = runtime
        self.received = threading.Event()
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.set()
        if not self.runtime.ready.is_set():
            raise KeyboardInterrupt("SIGTERM during startup")

    def restore(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
