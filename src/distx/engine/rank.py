"""One rank put together: its core, the features it serves, and its role's sequence.

`start_rank` builds a rank's `Executor` with the features every rank has (the sweep's
holder side, the halo mailbox); rank 0 also attaches a `Coordinator` (launch.py does,
since only rank 0 opens the results file). `run_sequence` runs the role's tasks in order
through the task catalogue.
"""

from __future__ import annotations

from distx.engine.command import end_commands
from distx.engine.coordinator import Coordinator
from distx.engine.core import RankCore, RunInfo
from distx.engine.halo import HaloMailbox
from distx.engine.sweep import SweepHolder
from distx.engine.taskrun import Executor, TaskRun
from distx.engine.tasks import TASKS
from distx.engine.transport import Transport
from distx.errors import Cancelled, TaskFailed
from distx.vocabulary import POST_RUN, RUN, RunState


def start_rank(transport: Transport, info: RunInfo) -> Executor:
    executor = Executor(RankCore(transport, info))
    SweepHolder(executor)
    HaloMailbox(executor)
    return executor


def preload_kernels(executor: Executor) -> None:
    """Import the kernels this rank's tasks call (and, on holders, the sweep's)."""
    info = executor.info
    holder = executor.rank in info.plan.holders
    executor.preload_kernels({
        spec.kernel for spec in info.script.tasks()
        if spec.kernel and (spec.role == executor.core.role
                            or (holder and TASKS[spec.task].kernel_on_holders))})


def run_sequence(executor: Executor) -> str:
    """Run this rank's role sequence; return the terminal state reached."""
    core = executor.core
    core.reach(RUN)
    roles = executor.info.script.roles
    sequence = roles[core.role].sequence if core.role in roles else ()
    previous_log: list[str] = []
    try:
        for spec in sequence:
            core.check_cancel(f"before task {spec.index} {spec.task}")
            task_type = TASKS[spec.task]
            previous_log = TaskRun(executor, spec, previous_log).execute(
                task_type.run, task_type.keys, task_type.shell_keys)
    except Cancelled as stop:
        return core.end_sequence(RunState.CANCELLED, str(stop))
    except TaskFailed as failure:
        return core.end_sequence(RunState.ERRORED, str(failure))  # the whole cause
    core.reach(POST_RUN)
    return core.end_sequence(RunState.FINISHED, "")


def run_as_worker(executor: Executor) -> None:
    """A rank other than 0: its sequence, then serving until the coordinator ends it."""
    run_sequence(executor)
    executor.core.serve_until_shutdown()
    end_commands(executor)
    executor.core.transport.close()


def run_as_coordinator(executor: Executor) -> tuple[str, int]:
    """Rank 0: its sequence, then the end of the run; return (final state, exit code)."""
    run_sequence(executor)
    return executor.feature(Coordinator).end_run()
