"""What kernels print, taken from the process's stdout and stderr and given back as lines.

Python's `print` and numba's `print` (which writes to file descriptor 1 from compiled code)
both end up on the file descriptors, so the capture works there: around a kernel call fds 1
and 2 point at a temporary file (`dup2`), and afterwards its text comes back as lines that
the caller logs with its rank (severity OUTPUT) and echoes with the rank prefix.

Descriptors belong to the process: with several virtual ranks in one process (threads,
`python -m distx` without mpiexec) one rank's capture would take the others' output, so
capturing is then off and kernel output stays as printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator

MAX_KEPT = 1 << 20
"""Bytes of one capture kept (the rest is counted, not kept): a kernel printing in a loop
must not fill rank 0's memory and the results file."""
OUTPUT = "OUTPUT"
"""The severity of captured output in /logs (as Run.CliExecute's command output)."""
_stderr: int | None = None


def real_stderr() -> int:
    """A descriptor of the process's stderr that no capture redirects: faulthandler's
    stack dumps (a crash, a kernel stuck past its Timeout) must reach the terminal even
    while a kernel's output is being captured."""
    global _stderr
    if _stderr is None:
        _stderr = os.dup(2)
    return _stderr


class OutputCapture:
    """Redirects fds 1 and 2 to one temporary file while a kernel runs."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._descriptor = -1
        if enabled:   # an unnamed file, for the life of the process
            self._descriptor, name = tempfile.mkstemp(prefix="distx-output-")
            os.unlink(name)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Yield a list that holds the printed lines once the block is left."""
        lines: list[str] = []
        with self.redirect() as take:
            try:
                yield lines
            finally:
                lines += take()

    @contextlib.contextmanager
    def redirect(self) -> Iterator[Callable[[], list[str]]]:
        """Point fds 1 and 2 at the file for the whole block; yield a function that
        returns the lines printed since its last call.

        For many short kernel calls in a row (Run.Iterate's steps): redirecting costs
        eight system calls and two flushes (about 25 us here, against 2 us to call a
        compiled kernel), taking the lines one seek when nothing was printed.
        """
        if not self.enabled:
            yield list
            return

        def take() -> list[str]:
            _flush()
            return self._take()
        _flush()
        saved = os.dup(1), os.dup(2)
        try:
            os.dup2(self._descriptor, 1)
            os.dup2(self._descriptor, 2)
            yield take
        finally:
            _flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

    def _take(self) -> list[str]:
        descriptor = self._descriptor
        size = os.lseek(descriptor, 0, os.SEEK_CUR)  # fds 1 and 2 shared this offset
        if not size:
            return []
        text = os.pread(descriptor, min(size, MAX_KEPT), 0).decode(errors="replace")
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        lines = text.splitlines()
        if size > MAX_KEPT:
            lines.append(f"[{size - MAX_KEPT:,} more bytes of output not kept]")
        return lines


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
