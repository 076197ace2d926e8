"""The open-files limit: which failures are the limit (a user's to raise) and which are
bugs. The raise itself and the refusal below the minimum run real processes
(tests/http/test_open_files.py, tests/core/test_cli_errors.py)."""

from __future__ import annotations

import errno
import os

from rt.core.errors import StageFailed, user_error
from rt.core.limits import too_many_open_files


def test_emfile_and_a_library_saying_so_are_the_users_to_fix():
    emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    gloo = RuntimeError("[enforce fail at loop.cc:48] rv != -1. pipe: Too many open files")
    for error in (emfile, gloo):
        found = too_many_open_files(error)
        assert found is not None
        assert "ulimit -n" in str(found) and "LimitNOFILE=" in str(found)
        assert str(found).endswith(f"({type(error).__name__}: {str(error)})")
        # inside a stage failure too: the CLI prints the one line, not the traceback
        assert str(user_error(StageFailed("workers", "tp", error, "tb"))) == str(found)


def test_other_failures_stay_bugs():
    system_wide = OSError(errno.ENFILE, "Too many open files in system")
    for error in (system_wide, RuntimeError("boom"), OSError(errno.ENOENT, "No such file")):
        assert too_many_open_files(error) is None
        assert user_error(StageFailed("workers", "tp", error, "tb")) is None
