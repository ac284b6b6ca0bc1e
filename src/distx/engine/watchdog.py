"""Kernel Timeouts: a kernel call that outlives its Timeout ends the run.

Every part of that lives here: watching a call (`watch_kernel`, used by Run.Kernel,
Run.Iterate and the sweep's holders), the error text, reporting the lost rank
(`report_stuck`), and rank 0's side (`StuckRanks`: the rank reaches Errored, those
interested hear of it, and the MPI job is aborted at the end of the run).

A kernel cannot be interrupted (numba code does not even look at signals), so the rank
running it is lost. One watchdog thread per process watches the calls in progress; when
one is overdue it calls the `expired` callback given for that call, which reports the rank
as Errored, with the cause, to rank 0, and rank 0 ends the run and aborts the MPI job.

A numba kernel compiled without `nogil=True` holds the GIL, so the watchdog thread cannot
run while it does. For that case faulthandler's own timer (a C thread, no GIL needed) is
armed as a backstop: it prints every thread's Python stack and exits the process with code
1, which makes the launcher end the job. It fires one Timeout (plus a margin) after the
overdue call's deadline, late enough never to hit a call that is still within its own.
faulthandler exits only once its dump is written, and that write can block for ever (a
stderr pipe that is full and not read: a run hung so in CI with the dump begun). So a
second timer, ALARM_AFTER_DUMP later, sends the process SIGALRM, whose default action ends
it in the kernel, whatever holds the GIL or blocks in a write. distx installs no SIGALRM
handler and uses no other interval timer (a kernel that does would disturb this one).
"""

from __future__ import annotations

import faulthandler
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

from distx.engine.core import RankCore
from distx.engine.output import real_stderr
from distx.engine.protocol import Event, EventKind, Kind, Milestone
from distx.vocabulary import ExitCode, RunState

POLL_SECONDS = 0.1
BACKSTOP_MARGIN = 5.0
ALARM_AFTER_DUMP = 3.0
"""Seconds from faulthandler's timer to SIGALRM's (a dump takes milliseconds)."""
ABORT_WAIT = 30.0  # how long a rank stuck in a kernel waits for rank 0 to abort the job


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
                    self._disarm_backstop()
            for call in due:
                call.expired()

    def _arm_backstop(self, call: _Call) -> None:
        """Set faulthandler's timer one Timeout (plus a margin) after `call`'s deadline,
        and SIGALRM's ALARM_AFTER_DUMP after it."""
        if self._backstop == call.deadline:
            return
        self._backstop = call.deadline
        delay = max(call.deadline - time.monotonic() + call.timeout + BACKSTOP_MARGIN, 0.1)
        faulthandler.dump_traceback_later(delay, exit=True, file=real_stderr())
        signal.setitimer(signal.ITIMER_REAL, delay + ALARM_AFTER_DUMP)

    def _disarm_backstop(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._backstop = None


WATCHDOG = KernelWatchdog()


def watch_kernel(core: RankCore, kernel: str, timeout: float | None,
                 stuck_record: Callable[[str], dict], where: str = "") -> AbstractContextManager:
    """Around one call of `kernel`: if it lasts `timeout` seconds, report this rank stuck.

    `stuck_record(error)` gives what rank 0 records besides the error: {"task": row of
    /tasks} or {"sweep": (sweep number, task id, start)}. No timeout: nothing is watched.
    """
    if timeout is None:
        return nullcontext()

    def expired() -> None:
        error = (f"kernel {kernel} on {core.describe(core.rank)} ran past its Timeout of "
                 f"{timeout:g} s; a kernel cannot be interrupted, so the run is aborted"
                 + where)
        report_stuck(core, {"error": error, **stuck_record(error)})
    return WATCHDOG.watch(timeout, expired)


def report_stuck(core: RankCore, record: dict) -> None:
    """From the watchdog thread: this rank is lost in a kernel call.

    Rank 0 learns why (and records the task or experiment), every rank sees this one
    reach Errored, so the run ends as for any error; rank 0 then aborts the MPI job,
    which is the only way to end this process. If that does not come, abort here.
    On rank 0 itself the serving thread is the lost one: this thread records the error,
    lets rank 0 close its file (`core.before_abort`) and ends the job.
    """
    core.echo(record["error"], "ERROR")
    event = Event(EventKind.STUCK, record)
    if core.rank == 0:
        core.deliver(0, Kind.EVENT, event)
        for close in core.before_abort:
            close()
        core.transport.abort(ExitCode.FAILED)
        return
    core.transport.send_from_thread(0, Kind.EVENT, event)
    errored = Milestone(RunState.ERRORED.value, time.time(), record["error"])
    for rank in range(1, core.info.plan.size):  # rank 0 records it from the event
        if rank != core.rank:
            core.transport.send_from_thread(rank, Kind.MILESTONE, errored)
    time.sleep(ABORT_WAIT)
    core.transport.abort(ExitCode.FAILED)


StuckListener = Callable[[int, dict], None]
"""Told (rank, stuck record) when a rank is lost in a kernel: rank 0 records the task,
the sweep the experiment."""


class StuckRanks:
    """Rank 0's side: the ranks reported lost in a kernel, and why."""

    def __init__(self, core: RankCore) -> None:
        self.core = core
        self.why: dict[int, str] = {}
        self.listeners: list[StuckListener] = []

    def on_report(self, source: int, record: dict) -> None:
        """`source` is lost (see report_stuck): it is Errored with the cause."""
        self.why[source] = record["error"]
        self.core.deliver(source, Kind.MILESTONE,
                          Milestone(RunState.ERRORED.value, time.time(), record["error"]))
        for listener in self.listeners:
            listener(source, record)

    def abort_if_any(self, exit_code: int) -> None:
        """At the end of the run: a lost rank can only be ended by aborting the MPI job."""
        if not self.why:
            return
        lost = ", ".join(self.core.describe(rank) for rank in self.why)
        print(f"distx: {lost} cannot be stopped (in a kernel past its Timeout): aborting "
              "the MPI job", file=sys.stderr, flush=True)
        self.core.transport.abort(exit_code)
