"""Run.Sweep, both ends: rank 0 farms experiments out to the holders and records each result.

The messages, in the order a sweep exchanges them (bodies in protocol.py), each end's
handler next to the other's:

    scheduler (rank 0, `Sweep`)            holder (`SweepHolder`, every holder rank)
    SWEEP_START  SweepPlan          ->     on_start: load and check the kernel
    on_ready                        <-     SWEEP_READY  SweepReady
    SWEEP_TASKS  SweepTasks         ->     on_tasks: run the batch
    on_results: record, feed more   <-     SWEEP_RESULTS  BatchResult

With replicated (or no) inputs every experiment is one task that any holder can run; with a
row-partitioned input it is one task per partition, each run where its partition lives,
reduced here into the experiment's result. Holders pull work as they free up: each keeps
two batches in flight so none idles, and the batch size adapts to measured task duration
(about BATCH_SECONDS of work per batch), so trivial kernels travel thousands to a message
while long ones still balance. With many holders a batch holds more work: the scheduler
measures what one result message costs it and makes batches long enough that answering
all holders takes at most COORDINATOR_SHARE of its time (4,096 holders at 60 us a
message: half-second batches). Nothing it does per message depends on the number of
holders: a result feeds the holder that sent it.

A failed task is retried (on another holder when the task can move) up to Retries times;
then its experiment is recorded as `error` and the sweep goes on. A kernel that cannot
compile stops the sweep at once.

A task id encodes (experiment position, partition): `task = position * parts + part`, so a
batch message is a list of integers and the holder derives everything else from the
script, which every rank has.

Under ULFM (transport.py) a holder may die: its batches in flight go back on the queue,
their attempts recorded as `lost` (not counted against Retries; results it sent before
are kept, anything after is dropped, so no task is recorded twice), and with row
partitions each of its partitions goes to the surviving holder with the fewest: rank 0
reads or generates the array again and sends that block (ADOPT), and the new holder runs
the partition's tasks besides its own. With no holder left the sweep fails.

Only experiments not `done` in the results file are run (all of them in a new file), so
`--resume` continues where a killed or stopped run left off. A stop request (SIGTERM,
SIGINT, SIGUSR1) stops handing out tasks, waits up to the grace period for those in flight,
and puts the experiments that did not finish back to `created`.

The scheduler changes the experiments table only in the methods under "the experiments
table" below; the table itself (results/) owns its columns.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distx.engine.coordinator import Coordinator
from distx.engine.core import drop_late
from distx.engine.data import Partition, materialize, row_blocks
from distx.engine.ids import answer_ids, experiment_ids
from distx.engine.kernels import (
    DEFAULT_OUTPUTS,
    KERNEL_ERRORS,
    PARTITION_NAMES,
    Binding,
    Kernel,
    fits_int64,
    is_compile_error,
    kernel_arguments,
    outputs_of,
)
from distx.engine.progress import Progress
from distx.engine.protocol import (
    Adoption,
    BatchResult,
    DataBlock,
    Kind,
    SweepPlan,
    SweepReady,
    SweepTasks,
)
from distx.engine.reduce import reduce_values
from distx.engine.taskrun import Executor, TaskRun
from distx.engine.watchdog import watch_kernel
from distx.errors import Cancelled, TaskFailed, UserError
from distx.lazy import numpy as np
from distx.results.arrays import KINDS as ARRAY_KINDS
from distx.results.arrays import pack
from distx.script.grid import Grid
from distx.script.model import ROWS
from distx.vocabulary import Status

# Rank 0 alone imports h5py (through results/): the holders import this module too.
if TYPE_CHECKING:
    from distx.results.experiments import ExperimentTable

COORDINATOR_CPU = "coordinator CPU"
"""In the sweep's last log line: rank 0's process CPU time during the sweep (the bench reads
it)."""
SET_UP_CPU = "of which set-up"
"""In the same line: the part of it before the first batch (ids, the table, its first
checkpoint); the rest is what the sweep itself costs rank 0."""
SWEEP_TASKS = -1
"""The task index in /logs of what sweep kernels printed on a holder (not a task of its own)."""
BATCH_SECONDS = 0.05
COORDINATOR_SHARE = 0.5
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


# ======== the scheduler side (rank 0) ========================================================
def run_sweep(run: TaskRun, config: dict) -> None:
    """The Run.Sweep task on rank 0."""
    cpu_before = time.process_time()
    coordinator = run.executor.feature(Coordinator)
    script = run.executor.info.script
    if script.experiments is None:
        raise TaskFailed("Run.Sweep needs an Experiments section with Keyfields")
    inputs = config.get("Inputs", [])
    rows_inputs = [name for name in inputs if script.data[name].partition == ROWS]
    holders = run.executor.info.plan.holders
    grid = script.experiments.grid()
    shard = coordinator.results.shard
    indices = np.arange(len(grid)) if shard is None else shard.indices(len(grid))
    ids = experiment_ids(coordinator.core, grid, indices)
    outputs = config.get("Outputs", list(DEFAULT_OUTPUTS))
    table = coordinator.results.experiments(grid, ids, outputs, indices)
    table_rows = table.rows_of(ids)
    todo = np.flatnonzero(table.status_of(table_rows) != Status.DONE.encoded)
    plan = SweepPlan(next(_numbers), config["Kernel"], inputs, config.get("Args", {}), outputs,
                     len(holders) if rows_inputs else 1, indices[todo], config.get("Timeout"))
    weights = None
    if rows_inputs:
        global_rows = coordinator.data_shapes[rows_inputs[0]][0]
        weights = [stop - start for start, stop in row_blocks(global_rows, len(holders))]
    sweep = Sweep(coordinator, plan, table, table_rows[todo], script.experiments.retries,
                  config.get("Reduce", "sum"), weights)
    set_up = time.process_time() - cpu_before    # the ids, the table and its first checkpoint
    skipped = len(indices) - len(todo)
    run.log(f"sweep of {len(todo)} experiments x {plan.parts} partition(s) on ranks "
            f"{list(holders)}" + (f" ({skipped} already done)" if skipped else "")
            + (f"; shard {shard}: {len(indices)} of the grid's {len(grid)}" if shard else ""))
    try:
        sweep.run()
    finally:
        sweep.progress.finish(sweep.remaining, sweep.errors)
        if run.spec.index == len(script.roles[run.spec.role].sequence) - 1:
            coordinator.results.flush()        # rank 0's last task: the close checkpoints
        else:
            coordinator.results.checkpoint()   # a plain HDF5 reader sees the whole table
    _report(run, coordinator, table, time.process_time() - cpu_before, set_up, len(todo))


def _report(run: TaskRun, coordinator: Coordinator, table: ExperimentTable, cpu: float,
            set_up: float, count: int) -> None:
    counts = table.counts()
    done, failed = counts.get(Status.DONE.value, 0), counts.get(Status.ERROR.value, 0)
    run.log(f"sweep finished: {done} done, {failed} error; {COORDINATOR_CPU} {cpu:.3f} s, "
            f"{cpu / max(1, count) * 1e6:.2f} us per experiment run; {SET_UP_CPU} "
            f"{set_up:.3f} s")
    if failed:
        coordinator.failed_experiments += failed
        first_id, first_error = table.first_error()
        run.log(f"{failed} experiment(s) failed; first: id {first_id}: {first_error}",
                "ERROR", echo=True)


class Sweep:
    """One sweep on rank 0: hands out batches, takes results, retries, records."""

    def __init__(self, coordinator: Coordinator, plan: SweepPlan, table: ExperimentTable,
                 rows: np.ndarray, retries: int, reduce: str,
                 weights: list[int] | None) -> None:
        self.coordinator = coordinator
        self.core = coordinator.core
        self.results = coordinator.results
        self.plan = plan
        self.table = table
        self.rows = rows  # table row of each experiment to run
        self.count = len(rows)
        self.earlier_attempts = table.attempts_of(self.rows)
        self.retries = retries
        self.reduce = reduce
        self.weights = weights
        self.holders = self.core.info.plan.holders
        self.hosts = self.core.info.hosts
        self.ready: dict[int, str | None] = {}
        self.loading = set(self.holders)   # holders that have not answered SWEEP_START
        self.in_flight = {rank: 0 for rank in self.holders}
        self.sent: dict[int, deque[tuple[np.ndarray, float]]] = {  # batches, when sent
            rank: deque() for rank in self.holders}
        self.dead: set[int] = set()
        self.feeding = False  # every live holder is ready
        self.seconds_per_task = {rank: 0.0 for rank in self.holders}
        self.attempts = np.zeros(self.count * plan.parts, dtype=np.int32)
        self.lost = np.zeros(self.count * plan.parts, dtype=np.int32)  # of those attempts
        self.failed_on: dict[int, set[int]] = {}
        self.pending: dict[int, _Pending] = {}
        self.fatal: str | None = None
        self.remaining = self.count
        self.errors = 0
        self.next_task = [0] * plan.parts                     # row partitions: per part
        self.parts_of = {rank: [part] if plan.parts > 1 else []  # the partitions it runs
                         for part, rank in enumerate(self.holders)}
        self.next_shared = 0                                  # otherwise: one queue
        self.retry: deque[int] = deque()
        self.retries_queued = 0           # failed tasks put into `retry`, ever
        self.starved: set[int] = set()   # holders with room for a batch that found no work
        self.message_seconds = 0.0       # what taking one result message costs rank 0
        self.progress = Progress(self.count, self.core.info.progress)
        table.expect_attempts(self.count * plan.parts)

    def run(self) -> None:
        if not self.count:
            return
        core = self.core
        core.register(Kind.SWEEP_READY, self.on_ready)
        core.register(Kind.SWEEP_RESULTS, self.on_results)
        self.coordinator.stuck.listeners.append(self.on_stuck)
        self.coordinator.before_close.append(self._unfinished_back_to_created)
        core.on_lost.append(self.on_lost)
        try:
            self._run()
        finally:
            core.register(Kind.SWEEP_READY, drop_late)
            core.register(Kind.SWEEP_RESULTS, drop_late)
            self.coordinator.stuck.listeners.remove(self.on_stuck)
            core.on_lost.remove(self.on_lost)
            self.coordinator.before_close.remove(self._unfinished_back_to_created)

    def _run(self) -> None:
        self.core.transport.send_to_each(self.holders, Kind.SWEEP_START, self.plan)
        for rank in list(self.core.lost):  # died before this sweep
            self.on_lost(rank)
        self.core.wait_until(self._all_ready, None, "holders to load the kernel")
        errors = {rank: error for rank, error in self.ready.items() if error}
        if errors:
            raise TaskFailed(next(iter(errors.values())))
        self.feeding = True
        for rank in self.holders:
            self._feed(rank)
        try:
            self.core.wait_until(self._finished, None, "sweep results", stoppable=False)
        finally:
            self._unfinished_back_to_created()

    def _all_ready(self) -> bool:
        if self.fatal:
            raise TaskFailed(self.fatal)
        return not self.loading

    def _finished(self) -> bool:
        if self.fatal:
            raise TaskFailed(self.fatal)
        if self.core.stop_requested:
            idle = not any(self.in_flight.values())
            if idle or self.core.past_grace():
                raise Cancelled(f"stopped by a signal with {self.remaining} experiment(s) "
                                "not done; --resume continues")
        return self.remaining == 0

    def on_ready(self, source: int, ready: SweepReady) -> None:
        if ready.number == self.plan.number:
            self.ready[source] = ready.error
            self.loading.discard(source)

    def on_stuck(self, source: int, record: dict) -> None:
        """A holder is lost in this task's kernel: the experiment errs, the sweep ends."""
        if "sweep" not in record:
            return
        number, task_id, start = record["sweep"]
        if number != self.plan.number:
            return
        position = task_id // self.plan.parts
        if self._still_running(position):  # not yet recorded
            entry = self._entry(position, source, start)
            entry.attempts = max(entry.attempts, int(self.attempts[task_id]))
            entry.failed = True
            now = time.time()
            self._record_stuck_attempt(source, task_id, start, now, record["error"])
            self._record(position, entry, source, now, Status.ERROR)
        self.fatal = record["error"]
        self._unfinished_back_to_created()

    # ----- a holder died (ULFM) ----------------------------------------------------------
    def on_lost(self, rank: int) -> None:
        """Put `rank`'s batches in flight back on the queue and give its partitions away."""
        if rank not in self.in_flight or rank in self.dead:
            return
        self.dead.add(rank)
        self.loading.discard(rank)
        alive = [holder for holder in self.holders if holder not in self.dead]
        if not alive:
            self.fatal = (f"every holder died (ranks {sorted(self.dead)}); "
                          "--resume continues the sweep")
            return
        for batch, sent in self.sent.pop(rank):
            self._lost_batch(batch, rank, sent)
        self.in_flight[rank] = 0
        for part in self.parts_of.pop(rank):
            heir = min(alive, key=lambda holder: len(self.parts_of[holder]))
            self.parts_of[heir].append(part)
            self._hand_over(part, heir)
        if self.feeding:
            for holder in alive:
                self._feed(holder)

    def _lost_batch(self, batch: np.ndarray, rank: int, sent: float) -> None:
        positions, parts = np.divmod(batch, self.plan.parts)
        self.table.record_lost_attempts(
            self.rows[positions], parts, self.earlier_attempts[positions] + self.attempts[batch],
            rank, self.hosts[rank], sent, time.time())
        self.lost[batch] += 1
        for task_id in batch.tolist():
            self.failed_on.setdefault(task_id, set())
            self.retry.append(task_id)

    def _hand_over(self, part: int, heir: int) -> None:
        """Send a dead holder's row partition `part` to `heir`, read or made again here."""
        script = self.core.info.script
        blocks = []
        for name in self.plan.inputs:
            spec = script.data[name]
            if spec.partition != ROWS:
                continue
            array = materialize(spec, script)
            start, stop = row_blocks(array.shape[0], len(self.holders))[part]
            blocks.append(DataBlock(name, start, array[start:stop]))
        self.core.transport.send(heir, Kind.ADOPT, Adoption(part, blocks))

    # ----- handing out work ---------------------------------------------------------------
    def _feed(self, rank: int) -> None:
        if rank in self.dead:
            return
        # One batch (of one task) until the holder's speed is known: with thousands of
        # holders, a second blind batch each would double the start's single-task messages.
        most = IN_FLIGHT if self.seconds_per_task[rank] > 0 else 1
        while self.in_flight[rank] < most and not self.core.stop_requested:
            batch = self._take(rank, self._batch_size(rank))
            if not len(batch):
                self.starved.add(rank)
                return
            self.starved.discard(rank)
            self.in_flight[rank] += 1
            self.sent[rank].append((batch, time.time()))
            self.attempts[batch] += 1
            self._mark_running(self.rows[batch // self.plan.parts], rank)
            self.core.transport.send(rank, Kind.SWEEP_TASKS,
                                     SweepTasks(self.plan.number, batch))

    def _batch_size(self, rank: int) -> int:
        """About BATCH_SECONDS of work, more when rank 0 could not answer every holder's
        batches of that length within COORDINATOR_SHARE of its time; near the end, at most
        a fair share of what is left, but never less than that coordinator bound (smaller
        batches would only wait for rank 0)."""
        per_task = self.seconds_per_task[rank]
        if per_task <= 0:
            return 1
        coordinator_seconds = len(self.holders) * self.message_seconds / COORDINATOR_SHARE
        most = max(BATCH_SECONDS, coordinator_seconds) / per_task
        least = coordinator_seconds / per_task
        experiments = self.count
        waiting = (sum(experiments - self.next_task[part] for part in self.parts_of[rank])
                   if self.plan.parts > 1 else experiments - self.next_shared) + len(self.retry)
        fair_share = math.ceil(waiting / (IN_FLIGHT * len(self.holders)))
        return max(1, min(MAX_BATCH, int(max(least, min(most, fair_share)))))

    def _take(self, rank: int, size: int) -> np.ndarray:
        """Up to `size` task ids for `rank`: retries first, then new tasks in order."""
        taken = [np.array(self._take_retries(rank, size), dtype=np.int64)]
        wanted = size - len(taken[0])
        if self.plan.parts > 1:
            for part in self.parts_of[rank]:  # its own, and those of dead holders
                first = self.next_task[part]
                count = min(wanted, self.count - first)
                self.next_task[part] += count
                wanted -= count
                taken.append(np.arange(first, first + count, dtype=np.int64)
                             * self.plan.parts + part)
        else:
            first = self.next_shared
            count = min(wanted, self.count - first)
            self.next_shared += count
            taken.append(np.arange(first, first + count, dtype=np.int64))
        return np.concatenate(taken)

    def _take_retries(self, rank: int, size: int) -> list[int]:
        """Failed tasks to try again, each on a holder it did not fail on if it can move."""
        taken = []
        for _ in range(len(self.retry)):
            task_id = self.retry.popleft()
            if self.plan.parts == 1:
                suitable = rank not in self.failed_on[task_id] or \
                    len(self.failed_on[task_id]) >= len(self.holders) - len(self.dead)
            else:
                suitable = task_id % self.plan.parts in self.parts_of[rank]
            if not suitable or len(taken) >= size:
                self.retry.append(task_id)
            else:
                taken.append(task_id)
        return taken

    # ----- taking results -----------------------------------------------------------------
    def on_results(self, source: int, batch: BatchResult) -> None:
        if batch.number != self.plan.number:
            return
        began = time.perf_counter()
        self.in_flight[source] -= 1
        queued = self.retries_queued
        self.sent[source].popleft()
        per_task = batch.seconds / max(1, len(batch.task_ids))
        previous = self.seconds_per_task[source]
        self.seconds_per_task[source] = per_task if previous <= 0 else 0.5 * (previous + per_task)
        self._record_attempts(source, batch)
        # Recorded all at once: experiments that one first, successful attempt finished
        # (numbers and arrays). Partitions, failures and retries go through _Pending.
        simple = batch.ok & (self.attempts[batch.task_ids] == 1) & (self.plan.parts == 1)
        self._record_done(source, batch, simple)
        others = np.flatnonzero(~simple)
        arrays = {} if not len(others) else {
            (position, name): array for name, (positions, block) in batch.arrays.items()
            for position, array in zip(positions.tolist(), block.arrays())
            if not simple[position]}
        for position in others.tolist():
            self._one_result(source, batch, position, arrays)
        self.progress.update(self.remaining, self.errors)
        if not self.fatal:
            self._feed(source)
            if self.retries_queued > queued:   # holders without work may take new retries
                for rank in list(self.starved):
                    self._feed(rank)
        spent = time.perf_counter() - began
        self.message_seconds = spent if not self.message_seconds else \
            0.9 * self.message_seconds + 0.1 * spent

    def _one_result(self, source: int, batch: BatchResult, position: int,
                    arrays: dict[tuple[int, str], np.ndarray]) -> None:
        task_id = int(batch.task_ids[position])
        start, end = float(batch.start[position]), float(batch.end[position])
        if batch.ok[position]:
            outputs = {name: arrays.get((position, name), column[position])
                       for name, column in batch.values.items()}
            self._task_done(task_id, source, outputs, start, end)
            return
        text, compile_error = batch.errors[position]
        if compile_error:
            self.fatal = f"kernel {self.plan.kernel} cannot compile: {text}"
        else:
            self._task_failed(task_id, source, text, start, end)

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
        entry.attempts = max(entry.attempts, int(self.attempts[task_id]))
        if len(entry.outputs) == self.plan.parts:
            self._record(position, entry, source, end, Status.DONE)

    def _task_failed(self, task_id: int, source: int, error: str, start: float,
                     end: float) -> None:
        position = task_id // self.plan.parts
        entry = self._entry(position, source, start)
        if entry.failed:
            return
        self.failed_on.setdefault(task_id, set()).add(source)
        if self.attempts[task_id] - self.lost[task_id] <= self.retries:
            self.retry.append(task_id)
            self.retries_queued += 1
            return
        entry.failed = True
        entry.attempts = max(entry.attempts, int(self.attempts[task_id]))
        self._record(position, entry, source, end, Status.ERROR)

    def _combine(self, entry: _Pending) -> dict[str, Any]:
        if self.plan.parts == 1:
            return entry.outputs[0]
        parts = [entry.outputs[part] for part in range(self.plan.parts)]
        return {name: reduce_values([p[name] for p in parts], self.reduce, self.weights)
                for name in self.plan.outputs}

    # ----- the experiments table: every change the sweep makes to it ----------------------
    def _still_running(self, position: int) -> bool:
        return self.table.status_of(self.rows[position]) == Status.RUNNING.encoded

    def _mark_running(self, rows: np.ndarray, rank: int) -> None:
        """The experiments of a batch handed to `rank` (those not running already)."""
        self.table.start(rows, rank, self.hosts[rank], time.time())

    def _unfinished_back_to_created(self) -> None:
        """After a stop or a fatal error: what did not finish is not done."""
        self.table.back_to_created(self.rows)

    def _record_attempts(self, source: int, batch: BatchResult) -> None:
        """One /attempts row per task, written as a block (and /errors rows of failed
        ones)."""
        positions, parts = np.divmod(batch.task_ids, self.plan.parts)
        self.table.record_attempts(
            self.rows[positions], parts,
            self.earlier_attempts[positions] + self.attempts[batch.task_ids], source,
            self.hosts[source], batch.start, batch.end, batch.ok,
            {position: text for position, (text, _) in batch.errors.items()})

    def _record_stuck_attempt(self, source: int, task_id: int, start: float, end: float,
                              error: str) -> None:
        """The attempt a holder is lost in: it never reports, so it is recorded here."""
        position, part = divmod(task_id, self.plan.parts)
        self.table.record_attempts(
            self.rows[[position]], np.array([part]),
            np.array([self.earlier_attempts[position] + self.attempts[task_id]]), source,
            self.hosts[source], np.array([start]), np.array([end]),
            np.zeros(1, dtype=bool), {0: error})

    def _record_done(self, source: int, batch: BatchResult, chosen: np.ndarray) -> None:
        """Experiments finished by one successful task, all at once: numbers, and each
        array output as one block."""
        task_ids = batch.task_ids[chosen]
        if not len(task_ids):
            return
        positions = task_ids // self.plan.parts
        self.table.record_done(
            self.rows[positions], source, self.hosts[source],
            self.earlier_attempts[positions] + self.attempts[task_ids],
            batch.start[chosen], batch.end[chosen],
            {name: column[chosen] for name, column in batch.values.items()})
        for name, (in_batch, block) in batch.arrays.items():
            recorded = chosen[in_batch]
            self.table.record_arrays(
                name, self.rows[batch.task_ids[in_batch[recorded]] // self.plan.parts],
                block if recorded.all() else block.take(recorded))
        self.remaining -= len(task_ids)

    def _record(self, position: int, entry: _Pending, source: int, end: float,
                status: Status) -> None:
        """One experiment finished (done or error) through _Pending."""
        row = int(self.rows[position])
        if self.plan.parts == 1 or len(entry.ranks) == 1:
            rank, host = source, self.hosts[source]  # the attempt that decided
        else:
            rank, host = -1, ""
        numbers = {}
        if status == Status.DONE:
            for name, value in self._combine(entry).items():
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    self.table.set_output_array(row, name, value)
                else:
                    numbers[name] = value
        self.table.record(row, status, rank, host,
                          self.earlier_attempts[position] + entry.attempts, entry.start, end,
                          numbers)
        del self.pending[position]
        self.remaining -= 1
        self.errors += status == Status.ERROR


# ======== the holder side (every holder rank) ================================================
@dataclass
class _ActiveSweep:
    plan: SweepPlan
    kernel: Kernel
    grid: Grid
    binding: Binding   # the kernel given this holder's partitions and the Args
    watch: Callable[[int, dict], AbstractContextManager] | None  # (task id, keyfields)
    adopted: dict[int, Binding] = field(default_factory=dict)  # by part: given its rows


class SweepHolder:
    """A holder's side of sweeps: registered on every rank that holds data partitions."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.core = executor.core
        self.active: _ActiveSweep | None = None
        self.adopted: dict[int, dict[str, Partition]] = {}  # dead holders' parts, by index
        self.core.register(Kind.SWEEP_START, self.on_start)
        self.core.register(Kind.SWEEP_TASKS, self.on_tasks)
        self.core.register(Kind.ADOPT, self.on_adopt)
        self.core.register(Kind.IDS_REQUEST, lambda source, request: answer_ids(
            self.core, executor.info.script.experiments.grid(), source, request))

    def on_start(self, source: int, plan: SweepPlan) -> None:
        """Load and check the kernel; answer SWEEP_READY with None or the error."""
        error = None
        executor = self.executor
        try:
            kernel = executor.kernels.get(plan.kernel)
            arguments = executor.kernel_arguments(plan.inputs, plan.args)
            grid = executor.info.script.experiments.grid()
            kernel.check_arguments(set(arguments) | set(grid.names) | set(PARTITION_NAMES))
            self.active = _ActiveSweep(plan, kernel, grid, kernel.bind(arguments, grid.names),
                                       self._watch if plan.timeout else None)
            for part in self.adopted:
                self._bind_adopted(part)
        except (UserError, TaskFailed) as failure:
            error = str(failure)
        self.core.transport.send(source, Kind.SWEEP_READY, SweepReady(plan.number, error))

    def on_adopt(self, source: int, adoption: Adoption) -> None:
        """Keep a dead holder's row partition and run its tasks from now on."""
        mine = self.executor.partitions
        self.adopted.setdefault(adoption.part, {}).update({
            block.array: Partition(block.array, block.block, block.offset,
                                   mine[block.array].global_shape, ROWS)
            for block in adoption.blocks})
        if self.active is not None:
            self._bind_adopted(adoption.part)

    def _bind_adopted(self, part: int) -> None:
        """The active sweep's kernel bound to partition `part`'s rows instead of this
        holder's own (replicated inputs are the same everywhere)."""
        active, executor = self.active, self.executor
        adopted = self.adopted[part]
        inputs = [adopted.get(name) or executor.partitions[name] for name in active.plan.inputs]
        active.adopted[part] = active.kernel.bind(kernel_arguments(inputs, active.plan.args),
                                                  active.grid.names)

    def _watch(self, task_id: int, keyfields: dict) -> AbstractContextManager:
        plan, start = self.active.plan, time.time()
        return watch_kernel(self.core, plan.kernel, plan.timeout,
                            lambda error: {"sweep": (plan.number, task_id, start)},
                            f" (experiment {keyfields})")

    def on_tasks(self, source: int, tasks: SweepTasks) -> None:
        active = self.active
        if active is None or active.plan.number != tasks.number:
            return
        with self.executor.output.capture() as printed:  # filled when the capture ends
            result = _run_batch(active, tasks.task_ids)
        # Before the results: once the last results are in, rank 0 may end the run.
        self.executor.kernel_output(printed, SWEEP_TASKS)
        self.core.transport.send(source, Kind.SWEEP_RESULTS, result)


# A holder's CPU per task is what a sweep of short tasks is made of (with 4 processes on 2
# cores a microsecond here is a microsecond the coordinator does not get), so a batch runs
# in three steps: the calls, in one loop that does nothing else (the kernel called
# positionally when it can be, one clock read per task); the results, converted at once
# when they are all plain numbers of one output; the few others one by one.
def _run_batch(active: _ActiveSweep, task_ids: np.ndarray) -> BatchResult:
    plan = active.plan
    function, arguments = _calls(active, task_ids)
    began = time.perf_counter()
    results, times, errors = _call_each(active.kernel, function, arguments)
    values, arrays = _outputs(results, errors, plan.outputs, active.kernel)
    seconds = time.perf_counter() - began  # the tasks' cost, from which rank 0 sizes batches
    ok = np.ones(len(task_ids), dtype=bool)
    ok[list(errors)] = False
    clock = np.array(times)
    return BatchResult(plan.number, task_ids, ok, clock[:-1], clock[1:], values, arrays,
                       dict(sorted(errors.items())), seconds)


def _calls(active: _ActiveSweep,
           task_ids: np.ndarray) -> tuple[Callable[..., Any], Iterable[tuple]]:
    """What to call for each task, and the argument tuples to call it with: the kernel on
    its keyfield values, unless a task needs more than that (a Timeout to watch, or an
    adopted partition whose tasks take that partition's binding)."""
    plan, binding = active.plan, active.binding
    columns = active.grid.keyfield_columns(plan.todo[task_ids // plan.parts])
    arguments = zip(*(columns[name] for name in binding.names)) if binding.names else \
        itertools.repeat((), len(task_ids))
    if active.watch is None and not active.adopted:
        return binding.function, arguments
    watch, adopted, parts = active.watch, active.adopted, plan.parts

    def guarded(task_id: int, position: int, values: tuple) -> Any:
        function = adopted.get(task_id % parts, binding).function
        if watch is None:
            return function(*values)
        with watch(task_id, {name: column[position] for name, column in columns.items()}):
            return function(*values)
    return guarded, zip(task_ids.tolist(), itertools.count(), arguments)


def _call_each(kernel: Kernel, function: Callable[..., Any],
               arguments: Iterable[tuple]) -> tuple[list, list[float], dict[int, tuple]]:
    """`function(*values)` for each tuple of `arguments`: the results (NaN for a call that
    failed), the clock before the first call and after each call (BatchResult.start), and
    the failures by position."""
    results: list = []
    errors: dict[int, tuple[str, bool]] = {}
    clock = time.time
    times = [clock()]
    keep, tick = results.append, times.append
    for values in arguments:
        try:
            keep(function(*values))
        except KERNEL_ERRORS as error:
            failure = kernel.failure(error)
            failure.__cause__ = error
            errors[len(results)] = (str(failure), is_compile_error(failure))
            keep(math.nan)
        tick(clock())
    return results, times, errors


def _outputs(results: list, errors: dict[int, tuple[str, bool]], names: list[str],
             kernel: Kernel) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """The results as BatchResult's columns: `values` (NaN where there is no number) and
    `arrays`. A result that is not a valid output fails its task: added to `errors`."""
    if len(names) == 1 and _plain_numbers(results):
        return {names[0]: np.array(results, dtype=np.float64)}, {}
    if len(names) == 1 and not errors and _plain_arrays(results):
        return {names[0]: np.full(len(results), np.nan)}, {
            names[0]: (np.arange(len(results), dtype=np.int64), pack(results))}
    values = {name: np.full(len(results), np.nan) for name in names}
    arrays: dict[str, tuple[list[int], list[np.ndarray]]] = {name: ([], []) for name in names}
    for position, result in enumerate(results):
        if position in errors:
            continue
        try:
            named = outputs_of(result, names, kernel)
        except TaskFailed as failure:
            errors[position] = (str(failure), is_compile_error(failure))
            continue
        for name, value in named.items():
            if isinstance(value, np.ndarray) and value.ndim:
                arrays[name][0].append(position)
                arrays[name][1].append(value)
            else:
                values[name][position] = value
    return values, {name: (np.array(positions, dtype=np.int64), pack(found))
                    for name, (positions, found) in arrays.items() if found}


def _plain_arrays(results: list) -> bool:
    """True if every result is a numpy array of numbers with at least one dimension, as
    outputs_of would take it (checked per result, it cost a holder 4 us of the ~6 us a
    50-element array task took)."""
    return {type(result) for result in results} == {np.ndarray} and all(
        result.ndim and result.dtype.kind in ARRAY_KINDS for result in results)


def _plain_numbers(results: list) -> bool:
    """True if every result is a number that `np.array(results, dtype=float64)` converts
    as outputs_of would: a float, a bool, a numpy integer or float, an int that fits in
    64 bits (a failed call's NaN included)."""
    kinds = set(map(type, results))
    if not all(kind in (float, int, bool) or issubclass(kind, (np.integer, np.floating,
                                                                np.bool_)) for kind in kinds):
        return False
    if int not in kinds:
        return True
    ints = [result for result in results if type(result) is int]
    return fits_int64(min(ints)) and fits_int64(max(ints))
