"""Rank 0: the coordinator role, the only writer of the results file, the end of the run.

Besides running its own sequence like any rank, rank 0 records every milestone, value,
task, log line and kept file that arrives, and drives sweeps. After its sequence it keeps
serving until every rank has reached a terminal milestone; if any rank errored it first
cancels the ranks still in their sequences, so nothing waits for a run that already failed.
Then it tells every rank to shut down with the run's exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distx.engine.runtime import RunInfo, Runtime
from distx.engine.transport import Kind, Transport
from distx.results.writer import ResultsFile
from distx.vocabulary import ExitCode

if TYPE_CHECKING:
    from distx.engine.sweep import Sweep




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
        self._record_stuck(self.rank, record)
        self.results.close("Errored", 1)
        self.transport.abort(1)

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
        failed = any(state == "Errored" for state, _ in self.terminal.values())
        if (failed or self.stop_requested) and not self.cancel_sent:
            self.cancel_sent = True
            for rank in range(1, self.info.plan.size):
                if rank not in self.terminal:
                    self.transport.send(rank, Kind.CONTROL, ("cancel",))
        return len(self.terminal) == self.info.plan.size
