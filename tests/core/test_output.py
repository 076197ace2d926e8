"""A failed write to standard output is an error (output.py); a reader that left is not."""

from __future__ import annotations

import errno
import io

import pytest
from rt.core.output import GuardedStdout, OutputError, finish_output


class FailingStream(io.StringIO):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error


def test_a_failed_write_or_flush_is_an_output_error_naming_the_cause():
    guarded = GuardedStdout(FailingStream(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OutputError, match=r"standard output: \[Errno 28\] No space left"):
        guarded.write("tokens")
    with pytest.raises(OutputError):
        guarded.flush()
    assert OutputError.exit_code == 1


def test_a_reader_that_left_stays_a_broken_pipe():
    guarded = GuardedStdout(FailingStream(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    with pytest.raises(BrokenPipeError):
        guarded.write("tokens")


def test_everything_else_is_the_streams():
    stream = io.StringIO()
    guarded = GuardedStdout(stream)
    print("hello", file=guarded)
    assert stream.getvalue() == "hello\n" and guarded.isatty() is False


def test_finish_output_turns_a_lost_result_into_exit_1(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout", FailingStream(OSError(errno.EIO, "Input/output error")))
    assert finish_output(0) == 1
    assert finish_output(3) == 3  # an earlier failure keeps its own code
    assert "rt: error: cannot write to standard output: [Errno 5]" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdout", FailingStream(BrokenPipeError(errno.EPIPE, "gone")))
    assert finish_output(0) == 0
