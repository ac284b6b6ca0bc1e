"""Rank 0's own part: the only writer of the results file, and the end of the run.

Attached to rank 0's executor, the coordinator records every milestone, value, task, log
line and kept file that arrives (its handler of EVENT messages), and flushes the file as it
serves. After rank 0's sequence it keeps serving until every rank has reached a terminal
milestone; if any rank errored it first cancels the ranks still in their sequences, so
nothing waits for a run that already failed. Then it tells every rank to shut down with
the run's exit code.

A rank that died (ULFM, see transport.py) is Errored with the cause "rank N on host H
died", recorded like any milestone. It fails the run only if it died with tasks of its
own sequence left: a holder that merely served (its sequence empty or finished) is
replaced by the sweep, so a sweep that completes on the survivors ends with exit code 0.

A stop (SIGTERM, SIGINT, SIGUSR1 on any rank) is bounded by `--grace`: no new work is
handed out, what finishes within the grace period is recorded, and when it is over rank 0
records every rank still busy as Cancelled, puts unfinished experiments back to `created`,
closes the file and, if a rank is still in a kernel (which cannot be interrupted), aborts
the MPI job; the exit code is 3 either way. If rank 0 itself is lost in a kernel then, a
timer thread does the same GRACE_MARGIN later (see `_grace_expired`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from distx.engine.core import RankCore
from distx.engine.output import real_stderr
from distx.engine.protocol import Command, Control, Event, EventKind, Kind, Milestone
from distx.engine.taskrun import Executor
from distx.engine.watchdog import StuckRanks
from distx.vocabulary import ExitCode, RunState

# Rank 0 alone writes HDF5: the other ranks never import h5py (start-up time counts), so
# the results file is named here for its type only; launch.py opens it.
if TYPE_CHECKING:
    from distx.results.writer import ResultsFile

GRACE_MARGIN = 2.0  # after the grace period, how long the serving thread gets to end the run


class Coordinator:
    def __init__(self, executor: Executor, results: ResultsFile,
                 data_shapes: dict[str, tuple[int, ...]]) -> None:
        self.core: RankCore = executor.core
        self.results = results
        self.data_shapes = data_shapes
        self.failed_experiments = 0
        self.cancel_sent = False
        self.stuck = StuckRanks(self.core)  # ranks lost in a kernel past its Timeout
        self.stuck.listeners.append(self._record_stuck_task)
        self.before_close: list[Callable[[], None]] = []  # e.g. the sweep puts rows back
        self._closing = threading.Lock()  # the file is closed once, by whichever thread
        self._closed = False
        self._grace_timer: threading.Timer | None = None
        core = self.core
        core.register(Kind.EVENT, self.on_event)
        record_milestone = core.handlers[Kind.MILESTONE]

        def on_milestone(source: int, milestone: Milestone) -> None:
            record_milestone(source, milestone)
            results.record_milestone(source, core.info.plan.role_of[source], milestone.name,
                                     milestone.when, milestone.detail)
        core.register(Kind.MILESTONE, on_milestone)
        core.after_serving.append(results.maybe_flush)
        core.before_abort.append(lambda: self.close_results(RunState.ERRORED.value,
                                                           ExitCode.FAILED))
        core.on_stop.append(self._start_grace_timer)
        executor.attach(self)

    # ----- recording ----------------------------------------------------------------------
    def on_event(self, source: int, event: Event) -> None:
        if event.kind == EventKind.VALUE:
            self.results.record_value(source, event.record)
        elif event.kind == EventKind.TASK:
            self.results.record_task(source, event.record)
        elif event.kind == EventKind.FILE:
            self.results.record_file(source, event.record)
        elif event.kind == EventKind.LOG:
            self.results.record_log(source, event.record)
        elif event.kind == EventKind.STUCK:
            self.stuck.on_report(source, event.record)

    def _record_stuck_task(self, source: int, record: dict) -> None:
        if "task" in record:
            self.results.record_task(source, record["task"])

    # ----- the end of the run ----------------------------------------------------------------
    def end_run(self) -> tuple[str, int]:
        """After rank 0's sequence: wait for every rank, then shut them down; return
        (final state, exit code)."""
        core = self.core
        core.wait_until(self._all_terminal, None, "every rank to finish its sequence",
                        stoppable=False)
        states = {state for rank, (state, _) in core.terminal.items() if self._decides(rank)}
        state = next((s for s in (RunState.ERRORED, RunState.CANCELLED) if s.value in states),
                     RunState.FINISHED)
        if state == RunState.ERRORED or (state == RunState.FINISHED and
                                         self.failed_experiments):
            exit_code = ExitCode.FAILED
        else:
            exit_code = ExitCode.STOPPED if state == RunState.CANCELLED else ExitCode.OK
        core.send_control(range(1, core.info.plan.size),
                          Control(Command.SHUTDOWN, int(exit_code)))
        core.exit_code = exit_code
        return state.value, exit_code

    def _all_terminal(self) -> bool:
        core = self.core
        if core.past_grace():
            self._cancel_the_busy()
        failed = any(state == RunState.ERRORED and self._decides(rank)
                     for rank, (state, _) in core.terminal.items())
        if (failed or core.stop_requested) and not self.cancel_sent:
            self.cancel_sent = True
            core.send_control([rank for rank in range(1, core.info.plan.size)
                               if rank not in core.terminal], Control(Command.CANCEL))
        return len(core.terminal) == core.info.plan.size

    def _decides(self, rank: int) -> bool:
        """Whether `rank`'s terminal state counts for the run's: not that of a rank that
        died with no task of its own sequence to run (it only served)."""
        core = self.core
        role = core.info.script.roles.get(core.info.plan.role_of[rank])
        return rank not in core.lost or bool(role and role.sequence)

    def _cancel_the_busy(self) -> None:
        """The grace period is over: every rank still in its sequence is recorded as
        Cancelled (it is in a kernel or command; the job is aborted after the file closes)."""
        core = self.core
        for rank in range(core.info.plan.size):
            if rank not in core.terminal:
                core.deliver(rank, Kind.MILESTONE, Milestone(
                    RunState.CANCELLED.value, time.time(),
                    f"still busy when the --grace period of {core.info.grace:g} s ended"))

    def join_deadline(self) -> float | None:
        """How long the end of the run waits for the ranks to meet: for ever, or, after
        a stop, until just after the grace period."""
        deadline = self.core.stop_deadline
        return None if deadline is None else deadline + GRACE_MARGIN / 2

    # ----- closing the file, from whichever thread ends the run ------------------------------
    def close_results(self, state: str, exit_code: int) -> bool:
        """Close the results file unless it is closed already; True if this call did."""
        with self._closing:
            if self._closed:
                return False
            if self._grace_timer is not None:
                self._grace_timer.cancel()
            for hook in self.before_close:
                hook()
            self.results.close(state, exit_code)
            self._closed = True
            return True

    def _start_grace_timer(self) -> None:
        self._grace_timer = threading.Timer(self.core.info.grace + GRACE_MARGIN,
                                            self._grace_expired)
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _grace_expired(self) -> None:
        """Timer thread, GRACE_MARGIN after the grace period: the serving thread has not
        closed the file, so it is lost in a kernel of this rank. Record what finished
        (experiments in flight back to `created`), close the file, end the job. Once the
        serving thread has shut the ranks down, it ends the run itself (in bounded time)."""
        if self.core.exit_code is not None or \
                not self.close_results(RunState.CANCELLED.value, ExitCode.STOPPED):
            return
        line = (f"distx: {self.core.info.script.name} cancelled: rank 0 was still in a "
                f"kernel {self.core.info.grace:g} s (--grace) after the stop; aborting the run "
                f"(exit code {ExitCode.STOPPED}); results in {self.results.path}; --resume "
                "continues it\n")
        os.write(real_stderr(), line.encode(errors="replace"))  # past any output capture
        self.core.transport.abort(ExitCode.STOPPED)
