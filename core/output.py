"""A command's standard output: a failed write is an error, never a lost result.

``rt generate > out.txt`` on a full disk must not exit 0 with an empty file, nor print
a traceback. While a command runs, ``sys.stdout`` is a :class:`GuardedStdout`: a write
or flush that fails raises :class:`OutputError` (one ``rt: error:`` line, exit 1). rt's
processes end with ``os._exit`` (no interpreter teardown), which skips Python's own
flush and its report of a failed one, so every exit path calls :func:`finish_output`.
A reader that left (EPIPE: ``rt ... | head``) is not an error: it asked for no more.
"""

from __future__ import annotations

import sys
from typing import Any

from rt.core.errors import RtError


class OutputError(RtError):
    """Standard output could not be written: the command's result is lost."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(f"cannot write to standard output: {cause}")


class GuardedStdout:
    """``sys.stdout`` for a running command: the real stream, whose failed writes and
    flushes (other than a reader that left) raise :class:`OutputError`."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e) from e

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e) from e

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, buffer, encoding...
        return getattr(self._stream, name)


def finish_output(code: int) -> int:
    """Flush standard output and error before ``os._exit(code)``; returns the code to
    exit with: ``code``, or 1 when the output could not be written (said on stderr)."""
    stdout = sys.stdout
    try:
        if stdout is not None:
            # main() has put the plain stream back by now: guard it again
            (stdout if isinstance(stdout, GuardedStdout) else GuardedStdout(stdout)).flush()
    except (BrokenPipeError, ValueError):  # the reader left; closed by the command
        pass
    except OutputError as e:
        _say(f"rt: error: {e}")
        code = code or 1
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass  # nowhere left to say anything
    return code


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass
