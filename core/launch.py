"""The ``rt`` executable: offer the command to the installed launchers, else run it here.

A **launcher** may run a whole ``rt`` command in another process that is already up
(the built-in ``zygote`` plugin's launcher hands ``rt serve`` and ``rt generate`` to a
resident process that has imported torch and the engine) and return its exit code, so
this process never imports rt's CLI. Launchers are entry points in the group
``rt.launchers``, registered like plugins::

    [project.entry-points."rt.launchers"]
    zygote = "rt.plugins.zygote.launch:launch"

``launch(argv: list[str]) -> int | None`` gets the arguments after ``rt``; it returns the
command's exit code when it ran the command, or None to let this process run it (the
usual answer: wrong command, nothing running to hand it to, or a refusal). It runs
before any config, plugin manager or timeline exists, so it must be quick when it
declines (a file check, not an import of torch) and must never half-run a command: it
either ran it or it did not. Launchers are tried in name order; one that raises is
reported on stderr and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

LAUNCHER_GROUP = "rt.launchers"


def launched(argv: Sequence[str]) -> int | None:
    """The exit code of ``rt ARGV`` if a launcher ran it, else None."""
    from rt.core.entry_points import entry_points

    for point in sorted(entry_points([LAUNCHER_GROUP]), key=lambda p: p.name):
        try:
            code = point.load()(list(argv))  # type: ignore[operator]
        except Exception as e:  # a broken launcher must not stop rt from starting
            print(
                f"rt: launcher {point.name!r} from {point.dist} {point.version} failed "
                f"({type(e).__name__}: {e}); running the command in this process",
                file=sys.stderr,
            )
            continue
        if code is not None:
            return int(code)
    return None


def deleted_working_directory() -> str | None:
    """The error line for a working directory that no longer exists, else None.

    Run there, ``import torch`` dies in MKL's loader ("Intel oneMKL FATAL ERROR: Cannot
    load libtorch_cpu.so"), a zygote cannot hand its fork the directory, and relative
    paths mean nothing: rt says so before any of that.
    """
    try:
        os.getcwd()
    except FileNotFoundError:
        return (
            "rt: error: the current directory no longer exists (it was deleted, or its "
            "mount went away); cd to an existing directory and run rt again"
        )
    return None


def console_main() -> None:
    """The ``rt`` executable (and ``python -m rt``)."""
    error = deleted_working_directory()
    if error is not None:
        print(error, file=sys.stderr)
        os._exit(2)
    from rt.core.limits import raise_open_files_limit

    raise_open_files_limit()  # before a launcher hands this process's limits on
    code = launched(sys.argv[1:])
    if code is None:
        from rt.core.cli import console_main as run_here

        run_here()  # exits
    from rt.core.output import finish_output

    os._exit(finish_output(code))
