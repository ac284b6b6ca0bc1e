"""The worker side of Run.Sweep: prepare the kernel, run batches of tasks on local partitions.

A task id encodes (experiment index, partition): `task = experiment * parts + part`, so a
batch message is a list of integers and the worker derives everything else from the
script, which every rank has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distx.engine.kernels import (
    PARTITION_NAMES,
    Kernel,
    fits_int64,
    is_compile_error,
    outputs_of,
)
from distx.engine.transport import Kind
from distx.engine.watchdog import WATCHDOG
from distx.errors import TaskFailed, UserError
from distx.script.grid import Grid

if TYPE_CHECKING:
    from distx.engine.runtime import Runtime


@dataclass
class SweepPlan:
    """What rank 0 tells the holders about a sweep in SWEEP_START.

    `todo` holds the grid indices of the experiments to run (all but those already done
    when resuming); a task id is `position in todo * parts + part`. Holders decode the
    keyfields from the grid index, so the message of a batch is a list of integers.
    """

    number: int
    kernel: str
    inputs: list[str]
    args: dict
    outputs: list[str]
    parts: int
    todo: np.ndarray
    timeout: float | None = None  # of one kernel call (see watchdog.py)


@dataclass
class BatchResult:
    """The results of one batch of tasks, as columns (what SWEEP_RESULTS carries)."""

    number: int
    task_ids: np.ndarray                         # int64
    ok: np.ndarray                               # bool
    start: np.ndarray                            # float64, Unix seconds
    end: np.ndarray
    values: dict[str, np.ndarray]                # float64 per output; NaN if not a number
    arrays: dict[tuple[int, str], np.ndarray]    # (position in batch, output) -> array
    errors: dict[int, tuple[str, bool]]          # position -> (text, cannot compile?)
    seconds: float


@dataclass
class _ActiveSweep:
    plan: SweepPlan
    kernel: Kernel
    grid: Grid
    call: Callable[[dict], Any]
    watch: Callable[[int, dict], AbstractContextManager] | None  # (task id, keyfields)


class SweepWorker:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.active: _ActiveSweep | None = None

    def on_start(self, source: int, plan: SweepPlan) -> None:
        """Load and check the kernel; answer SWEEP_READY with None or the error."""
        error = None
        try:
            kernel = self.runtime.kernels.get(plan.kernel)
            arguments = self.runtime.kernel_arguments(plan.inputs, plan.args)
            grid = self.runtime.info.script.experiments.grid()
            kernel.check_arguments(set(arguments) | set(grid.names) | set(PARTITION_NAMES))
            self.active = _ActiveSweep(plan, kernel, grid, kernel.bind(arguments, grid.names),
                                       self._watch if plan.timeout else None)
        except (UserError, TaskFailed) as failure:
            error = str(failure)
        self.runtime.transport.send(source, Kind.SWEEP_READY, (plan.number, error))

    def _watch(self, task_id: int, keyfields: dict) -> AbstractContextManager:
        plan, start = self.active.plan, time.time()

        def expired() -> None:
            error = (self.runtime.overdue_kernel_text(plan.kernel, plan.timeout)
                     + f" (experiment {keyfields})")
            self.runtime.kernel_stuck({"error": error,
                                       "sweep": (plan.number, task_id, start)})
        return WATCHDOG.watch(plan.timeout, expired)

    def on_tasks(self, source: int, body: tuple) -> None:
        number, task_ids = body
        active = self.active
        if active is None or active.plan.number != number:
            return
        self.runtime.transport.send(source, Kind.SWEEP_RESULTS, _run_batch(active, task_ids))


def _run_batch(active: _ActiveSweep, task_ids: np.ndarray) -> BatchResult:
    plan, kernel = active.plan, active.kernel
    count = len(task_ids)
    ok = np.ones(count, dtype=bool)
    start, end = np.empty(count), np.empty(count)
    values = {name: np.full(count, np.nan) for name in plan.outputs}
    arrays: dict[tuple[int, str], np.ndarray] = {}
    errors: dict[int, tuple[str, bool]] = {}
    lone = plan.outputs[0] if len(plan.outputs) == 1 else None
    columns = active.grid.keyfield_columns(plan.todo[task_ids // plan.parts])
    names, call = list(columns), active.call
    began = time.perf_counter()
    for position, combo in enumerate(zip(*columns.values())):
        start[position] = time.time()
        try:
            keyfields = dict(zip(names, combo))
            if active.watch is None:
                result = call(keyfields)
            else:
                with active.watch(int(task_ids[position]), keyfields):
                    result = call(keyfields)
            if lone is not None and (type(result) is float or
                                     (type(result) is int and fits_int64(result))):
                values[lone][position] = result       # the common case, without checks
            else:
                for name, value in outputs_of(result, plan.outputs, kernel).items():
                    if isinstance(value, np.ndarray):
                        arrays[(position, name)] = value
                    else:
                        values[name][position] = value
        except TaskFailed as failure:
            ok[position] = False
            errors[position] = (str(failure), is_compile_error(failure))
        end[position] = time.time()
    return BatchResult(plan.number, task_ids, ok, start, end, values, arrays, errors,
                       time.perf_counter() - began)
