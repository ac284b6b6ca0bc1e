"""Run.Sweep on the coordinator: farm experiments out to the holders and record each result.

With replicated (or no) inputs every experiment is one task that any holder can run; with a
row-partitioned input it is one task per partition, each run where its partition lives,
reduced here into the experiment's result. Holders pull work as they free up: each keeps
two batches in flight so none idles, and the batch size adapts to measured task duration
(about BATCH_SECONDS of work per batch), so trivial kernels travel thousands to a message
while long ones still balance. A failed task is retried (on another holder when the task
can move) up to Retries times; then its experiment is recorded as `error` and the sweep
goes on. A kernel that cannot compile stops the sweep at once.

Only experiments not `done` in the results file are run (all of them in a new file), so
`--resume` continues where a killed or stopped run left off. A stop request (SIGTERM,
SIGINT, SIGUSR1) stops handing out tasks, waits up to the grace period for those in flight,
and puts the experiments that did not finish back to `created`.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distx.data import row_blocks
from distx.errors import Cancelled, TaskFailed
from distx.tasks import reduce_values
from distx.transport import Kind
from distx.worker import SweepPlan

if TYPE_CHECKING:
    from distx.coordinator import Coordinator
    from distx.results import ExperimentTable
    from distx.runtime import TaskRun

BATCH_SECONDS = 0.05
MAX_BATCH = 4096
IN_FLIGHT = 2
_numbers = itertools.count(1)


@dataclass
class _Pending:
    """An experiment of this run whose tasks are not all finished."""

    outputs: dict[int, dict[str, Any]] = field(default_factory=dict)
    attempts: int = 0
    start: float = math.inf
    ranks: set[int] = field(default_factory=set)
    failed: bool = False


def run_sweep(run: TaskRun, config: dict) -> None:
    coordinator: Coordinator = run.runtime
    script = coordinator.info.script
    if script.experiments is None:
        raise TaskFailed("Run.Sweep needs an Experiments section with Keyfields")
    inputs = config.get("Inputs", [])
    rows_inputs = [name for name in inputs if script.data[name].partition == "rows"]
    holders = coordinator.info.plan.holders
    experiments = script.experiments.build()
    outputs = config.get("Outputs", ["result"])
    table = coordinator.results.experiments(experiments, outputs)
    todo = np.array([e.index for e in experiments
                     if table.rows["status"][table.row_of[e.id]] != b"done"], dtype=np.int64)
    plan = SweepPlan(next(_numbers), config["Kernel"], inputs, config.get("Args", {}), outputs,
                     len(holders) if rows_inputs else 1, todo)
    weights = None
    if rows_inputs:
        rows = coordinator.data_shapes[rows_inputs[0]][0]
        weights = [stop - start for start, stop in row_blocks(rows, len(holders))]
    sweep = Sweep(coordinator, plan, table, [experiments[i].id for i in todo],
                  script.experiments.retries, config.get("Reduce", "sum"), weights)
    skipped = len(experiments) - len(todo)
    run.log(f"sweep of {len(todo)} experiments x {plan.parts} partition(s) on ranks "
            f"{list(holders)}" + (f" ({skipped} already done)" if skipped else ""))
    coordinator.active_sweep = sweep
    try:
        sweep.run()
    finally:
        coordinator.active_sweep = None
        sweep.progress.finish(sweep.remaining, sweep.errors)
        coordinator.results.flush()
    _report(run, coordinator, table)


def _report(run: TaskRun, coordinator: Coordinator, table: ExperimentTable) -> None:
    counts = table.counts()
    run.log(f"sweep finished: {counts.get('done', 0)} done, {counts.get('error', 0)} error")
    if counts.get("error"):
        coordinator.failed_experiments += counts["error"]
        first = table.rows[table.rows["status"] == b"error"][0]
        run.log(f"{counts['error']} experiment(s) failed; first: id {first['id'].decode()}: "
                f"{first['error'].splitlines()[0] if first['error'] else ''}", "ERROR",
                echo=True)


class Sweep:
    def __init__(self, coordinator: Coordinator, plan: SweepPlan, table: ExperimentTable,
                 ids: list[str], retries: int, reduce: str, weights: list[int] | None) -> None:
        self.coordinator = coordinator
        self.plan = plan
        self.table = table
        self.ids = ids
        self.rows = [table.row_of[experiment_id] for experiment_id in ids]
        self.earlier_attempts = [int(table.rows["attempts"][row]) for row in self.rows]
        self.retries = retries
        self.reduce = reduce
        self.weights = weights
        self.holders = coordinator.info.plan.holders
        self.hosts = coordinator.info.hosts
        self.ready: dict[int, str | None] = {}
        self.in_flight = {rank: 0 for rank in self.holders}
        self.seconds_per_task = {rank: 0.0 for rank in self.holders}
        self.attempts: dict[int, int] = {}
        self.failed_on: dict[int, set[int]] = {}
        self.pending: dict[int, _Pending] = {}
        self.fatal: str | None = None
        self.remaining = len(ids)
        self.errors = 0
        self.stop_deadline: float | None = None
        if plan.parts == 1:
            self.shared: deque[int] = deque(range(len(ids)))
            self.own: dict[int, deque[int]] = {rank: deque() for rank in self.holders}
        else:
            self.shared = deque()
            self.own = {rank: deque(e * plan.parts + part for e in range(len(ids)))
                        for part, rank in enumerate(self.holders)}
        self.retry: deque[int] = deque()
        self.progress = Progress(len(ids))

    def run(self) -> None:
        if not self.ids:
            return
        for rank in self.holders:
            self.coordinator.transport.send(rank, Kind.SWEEP_START, self.plan)
        self.coordinator.wait_until(lambda: len(self.ready) == len(self.holders), None,
                                    "holders to load the kernel")
        errors = {rank: error for rank, error in self.ready.items() if error}
        if errors:
            raise TaskFailed(next(iter(errors.values())))
        for rank in self.holders:
            self._feed(rank)
        try:
            self.coordinator.wait_until(self._finished, None, "sweep results", stoppable=False)
        finally:
            self._unfinished_back_to_created()

    def _finished(self) -> bool:
        if self.fatal:
            raise TaskFailed(self.fatal)
        if self.coordinator.stop_requested:
            grace = self.coordinator.info.grace
            if self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + grace
            idle = not any(self.in_flight.values())
            if idle or time.monotonic() >= self.stop_deadline:
                raise Cancelled(f"stopped by a signal with {self.remaining} experiment(s) "
                                "not done; --resume continues")
        return self.remaining == 0

    def _unfinished_back_to_created(self) -> None:
        """After a stop or a fatal error: what did not finish is not done."""
        for row in self.rows:
            if self.table.rows["status"][row] == b"running":
                self.table.update(row, status="created")

    def on_ready(self, source: int, body: tuple) -> None:
        number, error = body
        if number == self.plan.number:
            self.ready[source] = error

    # ----- handing out work ---------------------------------------------------------------
    def _feed(self, rank: int) -> None:
        while self.in_flight[rank] < IN_FLIGHT and not self.coordinator.stop_requested:
            batch = self._take(rank, self._batch_size(rank))
            if not batch:
                return
            self.in_flight[rank] += 1
            now = time.time()
            for task_id in batch:
                position = task_id // self.plan.parts
                self.attempts[task_id] = self.attempts.get(task_id, 0) + 1
                if self.table.rows["status"][self.rows[position]] != b"running":
                    self.table.update(self.rows[position], status="running", rank=rank,
                                      host=self.hosts[rank], start=now)
            self.coordinator.transport.send(rank, Kind.SWEEP_TASKS, (self.plan.number, batch))

    def _batch_size(self, rank: int) -> int:
        per_task = self.seconds_per_task[rank]
        if per_task <= 0:
            return 1
        waiting = len(self.shared) + len(self.own[rank]) + len(self.retry)
        fair_share = max(1, math.ceil(waiting / (IN_FLIGHT * len(self.holders))))
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / per_task), fair_share))

    def _take(self, rank: int, size: int) -> list[int]:
        batch = []
        for _ in range(len(self.retry)):
            task_id = self.retry.popleft()
            movable = self.plan.parts == 1
            if movable and rank in self.failed_on[task_id] and \
                    len(self.failed_on[task_id]) < len(self.holders):
                self.retry.append(task_id)
                continue
            if not movable and task_id % self.plan.parts != self.holders.index(rank):
                self.retry.append(task_id)
                continue
            batch.append(task_id)
            if len(batch) >= size:
                return batch
        for source in (self.own[rank], self.shared):
            while source and len(batch) < size:
                batch.append(source.popleft())
        return batch

    # ----- taking results -----------------------------------------------------------------
    def on_results(self, source: int, body: tuple) -> None:
        number, results, seconds = body
        if number != self.plan.number:
            return
        self.in_flight[source] -= 1
        per_task = seconds / max(1, len(results))
        previous = self.seconds_per_task[source]
        self.seconds_per_task[source] = per_task if previous <= 0 else 0.5 * (previous + per_task)
        for task_id, ok, outputs, start, end, compile_error in results:
            self._record_attempt(task_id, source, ok, outputs, start, end)
            if ok:
                self._task_done(task_id, source, outputs, start, end)
            elif compile_error:
                self.fatal = f"kernel {self.plan.kernel} cannot compile: {outputs}"
            else:
                self._task_failed(task_id, source, outputs, start, end)
        self.progress.update(self.remaining, self.errors)
        if not self.fatal:
            for rank in self.holders:
                self._feed(rank)

    def _record_attempt(self, task_id: int, source: int, ok: bool, outputs: Any,
                        start: float, end: float) -> None:
        position, part = divmod(task_id, self.plan.parts)
        attempt = self.earlier_attempts[position] + self.attempts[task_id]
        self.coordinator.results.record_attempt(
            self.ids[position], part, attempt, source, self.hosts[source], start, end,
            "done" if ok else "error", "" if ok else outputs)

    def _entry(self, position: int, source: int, start: float) -> _Pending:
        entry = self.pending.setdefault(position, _Pending())
        entry.start = min(entry.start, start)
        entry.ranks.add(source)
        return entry

    def _task_done(self, task_id: int, source: int, outputs: dict, start: float,
                   end: float) -> None:
        position, part = divmod(task_id, self.plan.parts)
        entry = self._entry(position, source, start)
        if entry.failed:
            return
        entry.outputs[part] = outputs
        entry.attempts = max(entry.attempts, self.attempts[task_id])
        if len(entry.outputs) == self.plan.parts:
            self._record(position, entry, source, end, "done", "")

    def _task_failed(self, task_id: int, source: int, error: str, start: float,
                     end: float) -> None:
        position = task_id // self.plan.parts
        entry = self._entry(position, source, start)
        if entry.failed:
            return
        self.failed_on.setdefault(task_id, set()).add(source)
        if self.attempts[task_id] <= self.retries:
            self.retry.append(task_id)
            return
        entry.failed = True
        entry.attempts = max(entry.attempts, self.attempts[task_id])
        self._record(position, entry, source, end, "error", error)

    def _record(self, position: int, entry: _Pending, source: int, end: float,
                status: str, error: str) -> None:
        fields: dict[str, Any] = {"status": status, "start": entry.start, "end": end,
                                  "attempts": self.earlier_attempts[position] + entry.attempts,
                                  "error": error}
        if self.plan.parts == 1 or len(entry.ranks) == 1:
            fields.update(rank=source, host=self.hosts[source])  # the attempt that decided
        else:
            fields.update(rank=-1, host=b"")
        if status == "done":
            for name, value in self._combine(entry).items():
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    self.table.set_output_array(self.ids[position], name, value)
                else:
                    fields[name] = float(value)
        self.table.update(self.rows[position], **fields)
        del self.pending[position]
        self.remaining -= 1
        self.errors += status == "error"

    def _combine(self, entry: _Pending) -> dict[str, Any]:
        if self.plan.parts == 1:
            return entry.outputs[0]
        parts = [entry.outputs[part] for part in range(self.plan.parts)]
        return {name: reduce_values([p[name] for p in parts], self.reduce, self.weights)
                for name in self.plan.outputs}


class Progress:
    """done/error/total, rate and ETA on stderr: a live line on a terminal, else every 5 s."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.began = time.monotonic()
        self.last = 0.0
        self.live = sys.stderr.isatty()
        self.interval = 0.2 if self.live else 5.0
        self.text = ""

    def update(self, remaining: int, errors: int, force: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < self.interval and not force:
            return
        self.last = now
        finished = self.total - remaining
        rate = finished / max(now - self.began, 1e-9)
        eta = remaining / rate if rate > 0 else math.inf
        self.text = (f"sweep: {finished - errors} done, {errors} error, {self.total} total, "
                     f"{rate:,.0f}/s, ETA {eta:,.0f} s")
        self._show()

    def _show(self) -> None:
        if self.live:
            print("\r" + self.text, end="", file=sys.stderr, flush=True)
        else:
            print(self.text, file=sys.stderr, flush=True)

    def finish(self, remaining: int, errors: int) -> None:
        """The final counts, always shown (also in a batch log)."""
        self.update(remaining, errors, force=True)
        if self.live:
            print(file=sys.stderr, flush=True)
