"""The limit on open files: raised at start, and named when it is hit anyway.

A server holds a file descriptor per client connection, and its ranks hold sockets,
pipes and mapped files: a soft limit of 1024 (common) runs out under load while the
hard limit allows far more, so ``rt`` raises its soft limit to the hard one (up to
``TARGET``) before anything else, and every process it starts inherits that. Below
``MINIMUM`` a start is refused up front (:func:`check_open_files_limit`): there, torch's
rendezvous store fails in ways that do not say why ("Failed to init uv loop", "Cannot
resolve 127.0.0.1") or waits out its two-minute timeout. When a stage still runs out,
:func:`too_many_open_files` turns the failure (an ``OSError`` EMFILE, or a library's
text for it) into one line that names the limit and the fix.
"""

from __future__ import annotations

import errno

from rt.core.errors import RtError

TARGET = 65536
MINIMUM = 256  # a TP=2 start needs ~40; the rest is for clients and headroom
MESSAGE = "Too many open files"


def raise_open_files_limit(target: int = TARGET) -> None:
    """Raise this process's soft limit on open files toward ``target`` (never above
    the hard limit, never down); a platform without the call is left as it is."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = target if hard == resource.RLIM_INFINITY else min(hard, target)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, OSError, ValueError):
        pass


def check_open_files_limit(minimum: int = MINIMUM) -> None:
    """Refuse to start below ``minimum`` open files, naming the limit and the fix."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError):
        return
    if soft != resource.RLIM_INFINITY and soft < minimum:
        raise RtError(
            f"this process may hold only {soft} open files (ulimit -n; the hard limit "
            f"is {_shown(hard)}); rt needs at least {minimum}: raise the limit (ulimit -n "
            f"{TARGET}, or LimitNOFILE={TARGET} in a systemd unit) and start again"
        )


def _shown(limit: int) -> str:
    import resource

    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def too_many_open_files(error: BaseException) -> RtError | None:
    """The user's error behind ``error`` when it is this process running out of file
    descriptors (EMFILE), else None (the whole system's table, ENFILE, reads "... in
    system" and is not this)."""
    text = str(error)
    ours = isinstance(error, OSError) and error.errno == errno.EMFILE
    if not ours and (MESSAGE not in text or f"{MESSAGE} in system" in text):
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return RtError(
        f"too many open files: a process may hold {soft} (ulimit -n; the hard limit is "
        f"{_shown(hard)}); raise the limit (ulimit -n {TARGET}, or LimitNOFILE={TARGET} in a "
        f"systemd unit) and start again ({type(error).__name__}: {text.splitlines()[0]})"
    )
