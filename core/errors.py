"""Errors a user or a plugin author can cause.

Every one of them is an ``RtError``: the CLI prints its message on one line (no
traceback unless ``--debug`` or ``RT_DEBUG=1``) and exits with its ``exit_code``, also when
a startup stage raised it (see :func:`user_error`). Messages name the culprit (stage,
plugin, key, value) and, where there is one, the fix.
"""

from __future__ import annotations

import os


class RtError(Exception):
    """Base class of rt's user-facing errors."""

    exit_code = 1


class UsageError(RtError):
    """Bad command-line input: an unknown plugin name, a malformed flag."""

    exit_code = 2


class ConfigError(RtError):
    """An unknown config key or a bad value; the message says where it came from."""

    exit_code = 2


class PluginError(RtError):
    """A plugin failed to import, or implements a hook that does not exist."""


class StageGraphError(RtError):
    """The stage graph is invalid: unknown needs, a cycle, a duplicate name."""


def traceback_without_message(error: BaseException) -> str:
    """``error``'s traceback (chained causes included) without its own closing message
    line: a :class:`StageFailed` header states that message already, and a message that
    holds another process's traceback (a rank's report) would otherwise print twice."""
    import traceback

    te = traceback.TracebackException.from_exception(error)
    lines = list(te.format())
    only = list(te.format_exception_only())
    if lines[-len(only) :] == only:
        lines = lines[: -len(only)]
    return "".join(lines)


class StageFailed(RtError):
    """A stage raised during startup. Carries the stage, the plugin and the traceback."""

    def __init__(self, stage: str, plugin: str | None, cause: BaseException, traceback_text: str):
        self.stage = stage
        self.plugin = plugin
        self.cause = cause
        self.traceback_text = traceback_text
        who = f" in plugin {plugin!r}" if plugin else ""
        super().__init__(
            f"startup stage {stage!r} failed{who}: {type(cause).__name__}: {cause}\n"
            f"--- original traceback ---\n{traceback_text.rstrip()}"
        )


def user_error(error: BaseException) -> RtError | None:
    """The error the user can fix behind ``error``, or ``None`` for a bug.

    A stage that raises an ``RtError`` fails startup with a :class:`StageFailed` around
    it; the user needs the inner message, not the wrapper's traceback. Any other
    exception inside a stage is a bug in rt or a plugin, whose traceback is the report.
    """
    while isinstance(error, StageFailed):
        error = error.cause
    if isinstance(error, RtError):
        return error
    from rt.core.limits import too_many_open_files

    return too_many_open_files(error)  # a limit the user can raise, not a bug


def debug_enabled() -> bool:
    """Whether errors show their traceback: ``RT_DEBUG`` set (``rt --debug`` sets it)."""
    return bool(os.environ.get("RT_DEBUG"))


class ModelError(RtError):
    """The model cannot be served as asked: unknown architecture, bad checkpoint, TP mismatch."""


class RequestError(RtError):
    """A request that can never be served (too long, bad parameters). HTTP maps it to 4xx,
    naming ``param`` (the request field at fault) in the error body."""

    def __init__(self, message: str, param: str = "prompt"):
        super().__init__(message)
        self.param = param


class EngineDead(RtError):
    """The engine stopped: a rank died or the engine was shut down."""
