"""Rank 0: the coordinator role, the only writer of the results file, the end of the run.

Besides running its own sequence like any rank, rank 0 records every milestone, value,
task, log line and kept file that arrives, and drives sweeps. After its sequence it keeps
serving until every rank has reached a terminal milestone; if any rank errored it first
cancels the ranks still in their sequences, so nothing waits for a run that already failed.
Then it tells every rank to shut down with the run's exit code.

A stop (SIGTERM, SIGINT, SIGUSR1 on any rank) is bounded by `--grace`: no new work is
handed out, what finishes within the grace period is recorded, and when it is over rank 0
records every rank still busy as Cancelled, puts unfinished experiments back to `created`,
closes the file and, if a rank is still in a kernel (which cannot be interrupted), aborts
the MPI job; the exit code is 3 either way. If rank 0 itself is lost in a kernel then, a
timer thread does the same GRACE_MARGIN later (see `_grace_expired`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distx.engine.runtime import RunInfo, Runtime
from distx.engine.transport import Kind, Transport
from distx.results.store import ResultsFile
from distx.vocabulary import ExitCode

if TYPE_CHECKING:
    from distx.engine.sweep import Sweep

GRACE_MARGIN = 2.0  # after the grace period, how long the serving thread gets to end the run


class Coordinator(Runtime):
    def __init__(self, transport: Transport, info: RunInfo, results: ResultsFile,
                 data_shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(transport, info)
        self.results = results
        self.data_shapes = data_shapes
        self.active_sweep: Sweep | None = None
        self.failed_experiments = 0
        self.cancel_sent = False
        self.stuck: dict[int, str] = {}  # rank -> why it is lost in a kernel call
        self.stop_deadline: float | None = None   # end of the grace period, once stopping
        self._grace_timer: threading.Timer | None = None
        self._closing = threading.Lock()  # the results file is closed once, by one thread
        self.handlers.update({
            Kind.EVENT: self.on_event,
            Kind.SWEEP_READY: self._to_sweep("on_ready"),
            Kind.SWEEP_RESULTS: self._to_sweep("on_results"),
        })

    def serve_once(self, timeout: float | None) -> bool:
        handled = super().serve_once(timeout)
        self.results.maybe_flush()
        return handled

    # ----- recording ----------------------------------------------------------------------
    def emit(self, kind: str, record: dict) -> None:
        self._record(self.rank, kind, record)

    def on_event(self, source: int, body: tuple) -> None:
        kind, record = body
        self._record(source, kind, record)

    def _record(self, source: int, kind: str, record: dict) -> None:
        writers = {"value": self.results.record_value, "task": self.results.record_task,
                   "file": self.results.record_file, "stuck": self._record_stuck}
        writers[kind](source, record)

    def _record_stuck(self, source: int, record: dict) -> None:
        """A rank is lost in a kernel past its Timeout: record its task or experiment."""
        self.stuck[source] = record["error"]
        self.on_milestone(source, ("Errored", time.time(), record["error"]))
        if "task" in record:
            self.results.record_task(source, record["task"])
        if "sweep" in record and self.active_sweep is not None:
            self.active_sweep.on_stuck(source, *record["sweep"], record["error"])

    def kernel_stuck(self, record: dict) -> None:
        """From the watchdog thread, rank 0's own kernel is past its Timeout: the serving
        thread is lost in it, so this thread records the error, closes the file and ends
        the job."""
        self.echo(record["error"], "ERROR")
        if self._closing.acquire(blocking=False):
            self._record_stuck(self.rank, record)
            self.results.close("Errored", 1)
        self.transport.abort(1)

    # ----- a stop, bounded by --grace ----------------------------------------------------------
    def on_signal(self) -> None:
        """From the signal handler, which runs even while this thread sleeps in a Python
        kernel: start the grace period now."""
        super().on_signal()
        self._start_grace()

    def request_stop(self) -> None:
        self._start_grace()
        super().request_stop()

    def _start_grace(self) -> None:
        if self.stop_deadline is not None:
            return
        grace = self.info.grace
        self.stop_deadline = time.monotonic() + grace
        self._grace_timer = threading.Timer(grace + GRACE_MARGIN, self._grace_expired)
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def past_grace(self) -> bool:
        """True once a stop's grace period is over."""
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    def join_deadline(self) -> float | None:
        """How long the end of the run waits for the ranks to meet: for ever, or, after
        a stop, until just after the grace period."""
        return None if self.stop_deadline is None else self.stop_deadline + GRACE_MARGIN / 2

    def close_results(self, state: str, exit_code: int) -> None:
        """Close the results file (the serving thread, at the end of the run)."""
        with self._closing:
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            self.results.close(state, exit_code)

    def _grace_expired(self) -> None:
        """Timer thread, GRACE_MARGIN after the grace period: the serving thread has not
        closed the file, so it is lost in a kernel of this rank. Record what finished
        (experiments in flight back to `created`), close the file, end the job."""
        if not self._closing.acquire(blocking=False):
            return  # the serving thread is closing it
        if self.active_sweep is not None:
            self.active_sweep.put_back_unfinished()
        self.results.close("Cancelled", ExitCode.STOPPED)
        print(f"distx: {self.info.script.name} cancelled: rank 0 was still in a kernel "
              f"{self.info.grace:g} s (--grace) after the stop; aborting the run (exit code "
              f"{ExitCode.STOPPED}); results in {self.results.path}; --resume continues it",
              file=sys.stderr, flush=True)
        self.transport.abort(ExitCode.STOPPED)

    def on_milestone(self, source: int, body: tuple) -> None:
        super().on_milestone(source, body)
        name, when, detail = body
        self.results.record_milestone(source, self.info.plan.role_of[source], name, when, detail)

    def _to_sweep(self, method: str) -> Callable[[int, Any], None]:
        """A handler passing sweep messages to the running sweep (late ones are dropped)."""
        def handle(source: int, body: Any) -> None:
            if self.active_sweep is not None:
                getattr(self.active_sweep, method)(source, body)
        return handle

    # ----- the end of the run ----------------------------------------------------------------
    def run_as_coordinator(self) -> tuple[str, int]:
        """Run rank 0's sequence and end the run; return (final state, exit code)."""
        self.run_sequence()
        self.wait_until(self._all_terminal, None, "every rank to finish its sequence",
                        stoppable=False)
        states = {state for state, _ in self.terminal.values()}
        state = next((s for s in ("Errored", "Cancelled") if s in states), "Finished")
        if state == "Errored" or (state == "Finished" and self.failed_experiments):
            exit_code = ExitCode.FAILED
        else:
            exit_code = ExitCode.STOPPED if state == "Cancelled" else ExitCode.OK
        for rank in range(1, self.info.plan.size):
            self.transport.send(rank, Kind.CONTROL, ("shutdown", exit_code))
        self.exit_code = exit_code
        return state, exit_code

    def _all_terminal(self) -> bool:
        if self.past_grace():
            self._cancel_the_busy()
        failed = any(state == "Errored" for state, _ in self.terminal.values())
        if (failed or self.stop_requested) and not self.cancel_sent:
            self.cancel_sent = True
            for rank in range(1, self.info.plan.size):
                if rank not in self.terminal:
                    self.transport.send(rank, Kind.CONTROL, ("cancel",))
        return len(self.terminal) == self.info.plan.size

    def _cancel_the_busy(self) -> None:
        """The grace period is over: every rank still in its sequence is recorded as
        Cancelled (it is in a kernel or command; the job is aborted after the file closes)."""
        for rank in range(self.info.plan.size):
            if rank not in self.terminal:
                self.on_milestone(rank, ("Cancelled", time.time(),
                                         f"still busy when the --grace period of "
                                         f"{self.info.grace:g} s ended"))
