"""What the server may tell a client: one-line messages, no server file paths.

Tracebacks and the details of an exception go to the server's log (under the
request's ``x-request-id``); a response says what happened in one line. Absolute file
paths (a model folder, the cache, a source file in an exception's text) are cut to
their last part, here and in the startup timeline the server publishes.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute file path of two or more parts (/home/u/models/x.safetensors,
# /usr/lib/python3/site-packages/...). Not a URL's path: that follows "host:port".
_FILE_PATH = re.compile(r"(?<![\w/.:])(?:/[\w.+@~-]+){2,}/?")


def one_line(message: str) -> str:
    """The first non-empty line of ``message``: never a traceback that follows it."""
    return next((line.strip() for line in message.splitlines() if line.strip()), "")


def redact_paths(text: str) -> str:
    """``text`` with every absolute file path cut to ``.../its-last-part``."""
    return _FILE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def public_message(text: str) -> str:
    """An exception's message fit for a client: one line, no file paths."""
    return redact_paths(one_line(text))


def public_data(value: Any) -> Any:
    """JSON-like ``value`` with :func:`redact_paths` applied to every string in it."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {k: public_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_data(v) for v in value]
    return value
