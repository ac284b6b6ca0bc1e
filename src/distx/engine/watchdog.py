"""Kernel Timeouts: a kernel call that outlives its Timeout ends the run.

A kernel cannot be interrupted (numba code does not even look at signals), so the rank
running it is lost. One watchdog thread per process watches the calls in progress; when
one is overdue it calls the `expired` callback given for that call, which reports the rank
as Errored, with the cause, to rank 0, and rank 0 ends the run and aborts the MPI job.

A numba kernel compiled without `nogil=True` holds the GIL, so the watchdog thread cannot
run while it does. For that case faulthandler's own timer (a C thread, no GIL needed) is
armed as a backstop: it prints every thread's Python stack and exits the process with code
1, which makes the launcher end the job. It fires one Timeout (plus a margin) after the
overdue call's deadline, late enough never to hit a call that is still within its own.
"""

from __future__ import annotations

import faulthandler
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

POLL_SECONDS = 0.1
BACKSTOP_MARGIN = 5.0


@dataclass
class _Call:
    deadline: float
    timeout: float
    expired: Callable[[], None]
    fired: bool = False


class KernelWatchdog:
    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._backstop: float | None = None  # deadline the faulthandler timer is set for

    @contextmanager
    def watch(self, timeout: float, expired: Callable[[], None]) -> Iterator[None]:
        """Within this block, call `expired()` (from the watchdog thread) once it has
        lasted `timeout` seconds."""
        number = next(self._numbers)
        call = _Call(time.monotonic() + timeout, timeout, expired)
        with self._lock:
            self._calls[number] = call
            if self._backstop is None:
                self._arm_backstop(call)  # the watchdog thread may get no GIL to do it
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="distx-watchdog")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                del self._calls[number]
            if call.fired:
                threading.Event().wait()  # `expired` is ending this process

    def _run(self) -> None:
        while True:
            time.sleep(POLL_SECONDS)
            now = time.monotonic()
            with self._lock:
                due = [call for call in self._calls.values()
                       if call.deadline <= now and not call.fired]
                for call in due:
                    call.fired = True
                if self._calls:
                    self._arm_backstop(min(self._calls.values(), key=lambda c: c.deadline))
                elif self._backstop is not None:
                    faulthandler.cancel_dump_traceback_later()
                    self._backstop = None
            for call in due:
                call.expired()

    def _arm_backstop(self, call: _Call) -> None:
        """Set faulthandler's timer one Timeout (plus a margin) after `call`'s deadline."""
        if self._backstop == call.deadline:
            return
        self._backstop = call.deadline
        delay = call.deadline - time.monotonic() + call.timeout + BACKSTOP_MARGIN
        faulthandler.dump_traceback_later(max(delay, 0.1), exit=True, file=2)


WATCHDOG = KernelWatchdog()
