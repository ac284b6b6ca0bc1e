"""One rank put together: its core, the features it serves, and its role's sequence.

`start_rank` builds a rank's `Executor` with the features every rank has (the sweep's
holder side, the halo mailbox); rank 0 also attaches a `Coordinator` (launch.py does,
since only rank 0 opens the results file). `run_sequence` runs the role's tasks in order
through the task catalogue.
"""

from __future__ import annotations

import contextlib

from distx.engine.command import end_commands
from distx.engine.coordinator import Coordinator
from distx.engine.core import RankCore, RunInfo
from distx.engine.halo import HaloMailbox
from distx.engine.sweep import SweepHolder
from distx.engine.taskrun import Executor, TaskRun
from distx.engine.tasks import TASKS
from distx.engine.transport import Transport
from distx.errors import Cancelled, TaskFailed, UserError
from distx.script.expand import has_references
from distx.script.model import TaskSpec
from distx.vocabulary import POST_RUN, RUN, RunState


def start_rank(transport: Transport, info: RunInfo) -> Executor:
    executor = Executor(RankCore(transport, info))
    SweepHolder(executor)
    HaloMailbox(executor)
    return executor


def preload_kernels(executor: Executor) -> None:
    """Import the kernels this rank's tasks call (and, on holders, the sweep's); load the
    compiled code of those its own tasks call here."""
    info = executor.info
    holder = executor.rank in info.plan.holders
    with_kernels = [spec for spec in info.script.tasks() if spec.kernel]
    own = [spec for spec in with_kernels if spec.role == executor.core.role]
    executor.preload_kernels({spec.kernel for spec in own} | {
        spec.kernel for spec in with_kernels if holder and TASKS[spec.task].kernel_on_holders})
    for spec in own:
        if not TASKS[spec.task].kernel_on_holders:
            _load_compiled(executor, spec)


def _load_compiled(executor: Executor, spec: TaskSpec) -> None:
    """Have numba load (or compile) `spec`'s kernel for the argument types this rank will
    give it, when they are known before the run: its partitions and Args without references.

    Numba loads a cached kernel on the first call of each signature (0.1-0.5 s here). On
    rank 0, validation has done it; on other ranks it fell into the task's first call,
    which made Run.Iterate on one holder twice as long as the same steps on one process.
    Problems are left to the task, which reports them properly.
    """
    config = spec.config
    inputs, args = config.get("Inputs", []), config.get("Args", {})
    if has_references([inputs, args]):
        return
    with contextlib.suppress(UserError, TaskFailed):
        base = executor.kernel_arguments(inputs, args)
        extras = TASKS[spec.task].kernel_extras
        examples = [base] if extras is None else extras.examples(executor.info.script,
                                                                 config, base)
        executor.kernels.get(spec.kernel).typing_error(examples)  # typing compiles


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
