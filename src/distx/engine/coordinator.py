"""Rank 0's own part: the only writer of the results file, and the end of the run.

Attached to rank 0's executor, the coordinator records every milestone, value, task, log
line and kept file that arrives (its handler of EVENT messages), and flushes the file as it
serves. After rank 0's sequence it keeps serving until every rank has reached a terminal
milestone; if any rank errored it first cancels the ranks still in their sequences, so
nothing waits for a run that already failed. Then it tells every rank to shut down with
the run's exit code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distx.engine.core import RankCore
from distx.engine.protocol import Command, Control, Event, EventKind, Kind, Milestone
from distx.engine.taskrun import Executor
from distx.engine.watchdog import StuckRanks
from distx.vocabulary import ExitCode, RunState

# Rank 0 alone writes HDF5: the other ranks never import h5py (start-up time counts), so
# the results file is named here for its type only; launch.py opens it.
if TYPE_CHECKING:
    from distx.results.writer import ResultsFile


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
        core = self.core
        core.register(Kind.EVENT, self.on_event)
        record_milestone = core.handlers[Kind.MILESTONE]

        def on_milestone(source: int, milestone: Milestone) -> None:
            record_milestone(source, milestone)
            results.record_milestone(source, core.info.plan.role_of[source], milestone.name,
                                     milestone.when, milestone.detail)
        core.register(Kind.MILESTONE, on_milestone)
        core.after_serving.append(results.maybe_flush)
        core.before_abort.append(lambda: results.close(RunState.ERRORED.value, ExitCode.FAILED))
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
        states = {state for state, _ in core.terminal.values()}
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
        failed = any(state == RunState.ERRORED for state, _ in core.terminal.values())
        if (failed or core.stop_requested) and not self.cancel_sent:
            self.cancel_sent = True
            core.send_control([rank for rank in range(1, core.info.plan.size)
                               if rank not in core.terminal], Control(Command.CANCEL))
        return len(core.terminal) == core.info.plan.size
