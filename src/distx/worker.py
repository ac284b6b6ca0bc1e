"""The worker side of Run.Sweep: prepare the kernel, run batches of tasks on local partitions.

A task id encodes (experiment index, partition): `task = experiment * parts + part`, so a
batch message is a list of integers and the worker derives everything else from the
script, which every rank has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from distx.errors import TaskFailed, UserError
from distx.grid import Experiment
from distx.kernels import PARTITION_NAMES, Kernel, is_compile_error, outputs_of
from distx.transport import Kind

if TYPE_CHECKING:
    from distx.runtime import Runtime


@dataclass
class SweepPlan:
    """What rank 0 tells the holders about a sweep in SWEEP_START.

    `todo` holds the grid indices of the experiments to run (all but those already done
    when resuming); a task id is `position in todo * parts + part`.
    """

    number: int
    kernel: str
    inputs: list[str]
    args: dict
    outputs: list[str]
    parts: int
    todo: np.ndarray


@dataclass
class _ActiveSweep:
    plan: SweepPlan
    kernel: Kernel
    experiments: list[Experiment]
    base_arguments: dict[str, Any]


class SweepWorker:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.active: _ActiveSweep | None = None
        self._experiments: list[Experiment] | None = None

    def experiments(self) -> list[Experiment]:
        if self._experiments is None:
            self._experiments = self.runtime.info.script.experiments.build()
        return self._experiments

    def on_start(self, source: int, plan: SweepPlan) -> None:
        """Load and check the kernel; answer SWEEP_READY with None or the error."""
        error = None
        try:
            kernel = self.runtime.kernels.get(plan.kernel)
            arguments = self.runtime.kernel_arguments(plan.inputs, plan.args)
            keyfields = set(self.experiments()[0].keyfields)
            kernel.check_arguments(set(arguments) | keyfields | set(PARTITION_NAMES))
            self.active = _ActiveSweep(plan, kernel, self.experiments(), arguments)
        except (UserError, TaskFailed) as failure:
            error = str(failure)
        self.runtime.transport.send(source, Kind.SWEEP_READY, (plan.number, error))

    def on_tasks(self, source: int, body: tuple) -> None:
        number, task_ids = body
        active = self.active
        if active is None or active.plan.number != number:
            return
        began = time.perf_counter()
        results = [self._run_one(active, task_id) for task_id in task_ids]
        self.runtime.transport.send(source, Kind.SWEEP_RESULTS,
                                    (number, results, time.perf_counter() - began))

    def _run_one(self, active: _ActiveSweep, task_id: int) -> tuple:
        """(task id, ok, outputs or error text, start, end, compile error?)"""
        experiment = active.experiments[active.plan.todo[task_id // active.plan.parts]]
        arguments = {**active.base_arguments, **experiment.keyfields}
        start = time.time()
        try:
            result = active.kernel.call(arguments)
            outputs = outputs_of(result, active.plan.outputs, active.kernel)
            return (task_id, True, outputs, start, time.time(), False)
        except TaskFailed as failure:
            return (task_id, False, str(failure), start, time.time(),
                    is_compile_error(failure))
