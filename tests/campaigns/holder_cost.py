"""A holder's CPU per sweep task, in process: `python tests/campaigns/holder_cost.py [--profile]`.

Runs `_run_batch` (what a holder does with one SWEEP_TASKS message) on batches of 4,096
tasks of the bench's kernels: `trivial` (plain Python, `seed * 2.0`) and the numba kernel
`sum_squares` on 8 values, each unwatched (the plain loop) and with a Timeout (the guarded
loop). Prints process CPU microseconds per task, the median of 7 batches; `--profile`
adds cProfile's top entries for the trivial kernel.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from distx.bench import benchkernels
from distx.engine.kernels import KernelLibrary
from distx.engine.protocol import SweepPlan
from distx.engine.sweep import _ActiveSweep, _run_batch
from distx.script.grid import Grid

TASKS = 4096


def sweep(kernel_name: str, fixed: dict, watched: bool) -> _ActiveSweep:
    kernel = KernelLibrary(Path(benchkernels.__file__).parent).get(kernel_name)
    grid = Grid({"seed": list(range(TASKS))})
    plan = SweepPlan(1, kernel_name, [], {}, ["result"], 1, np.arange(grid.size))
    watch = (lambda task_id, keyfields: nullcontext()) if watched else None
    return _ActiveSweep(plan, kernel, grid, kernel.bind(fixed, grid.names), watch)


def cpu_per_task(active: _ActiveSweep, batches: int = 7) -> float:
    """Median process CPU microseconds per task over `batches` batches (after one more)."""
    task_ids = np.arange(TASKS, dtype=np.int64)
    _run_batch(active, task_ids)
    seconds = []
    for _ in range(batches):
        began = time.process_time()
        _run_batch(active, task_ids)
        seconds.append(time.process_time() - began)
    return statistics.median(seconds) / TASKS * 1e6


def main() -> None:
    cases = {"trivial": ("benchkernels.trivial", {}),
             "sum_squares (numba, 8 values)": ("benchkernels.sum_squares",
                                               {"values": np.arange(8.0)})}
    for name, (kernel, fixed) in cases.items():
        for watched in (False, True):
            cost = cpu_per_task(sweep(kernel, fixed, watched))
            print(f"{name}{', watched' if watched else ''}: {cost:.3f} us of CPU per task")
    if "--profile" in sys.argv:
        active, task_ids = sweep(*cases["trivial"], False), np.arange(TASKS, dtype=np.int64)
        profile = cProfile.Profile()
        profile.runcall(lambda: [_run_batch(active, task_ids) for _ in range(20)])
        pstats.Stats(profile).sort_stats("tottime").print_stats(10)


if __name__ == "__main__":
    main()
