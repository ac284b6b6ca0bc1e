"""Run.Iterate: step a kernel over a row-partitioned array with halo exchange.

Before each step a holder sends its first `Halo` rows to the holder above and its last rows
to the holder below (point-to-point, worker to worker), then calls the kernel with its own
block plus `above` and `below` (the neighbours' rows; zero rows at the global edges) and
`step`. The kernel updates its block in place; the block stays resident between steps.

Under MPI the rows travel as raw buffers (`MPITransport.exchange_rows`: `Isend`/`Irecv`
straight from the block's edge rows into buffers kept for the whole task), not as tagged
messages through the rank core: a pickled message per side cost two MPI messages, a pickle
and a dispatch each step. Virtual ranks (threads of one process) send `HaloRows` messages.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from distx.engine.core import RankCore
from distx.engine.kernels import KERNEL_ERRORS, PARTITION_NAMES
from distx.engine.protocol import HaloRows, Kind
from distx.engine.taskrun import Executor, TaskRun
from distx.engine.transport import MPITransport
from distx.errors import TaskFailed
from distx.lazy import numpy as np
from distx.script.model import ROWS

HALO_ARGUMENTS = ("above", "below", "step")
"""What Run.Iterate passes its kernel besides Inputs and Args."""
HALO_SPIN = 5e-3
"""Seconds a holder polls for its neighbours' halo rows before it may sleep."""
HALO_LONGEST_PAUSE = 1e-3
"""The longest sleep between two polls after HALO_SPIN (pauses double from 1 us)."""
HALO_SERVE_EVERY = 1e-4
"""While it spins, a holder serves its rank's messages at most this often (seconds)."""
HALO_TAGS = 32768
"""Halo rows of step s travel with tag s % HALO_TAGS (MPI guarantees tags below 32768)."""


class HaloMailbox:
    """Halo rows that arrived from neighbours as messages (virtual ranks), until the step
    that needs them takes them."""

    def __init__(self, executor: Executor) -> None:
        self.rows: dict[tuple[str, int, str], np.ndarray] = {}
        executor.core.register(Kind.HALO, self.on_halo)
        executor.attach(self)

    def on_halo(self, source: int, halo: HaloRows) -> None:
        self.rows[(halo.array, halo.step, halo.side)] = halo.rows


class Neighbours(ABC):
    """One holder's side of the halo exchange of one Run.Iterate task: the ranks above
    and below it (None at a global edge) and how the rows get there."""

    def __init__(self, run: TaskRun, name: str, block: np.ndarray, halo: int) -> None:
        holders = run.executor.info.plan.holders
        position = holders.index(run.executor.rank)
        self.up = holders[position - 1] if position > 0 else None
        self.down = holders[position + 1] if position + 1 < len(holders) else None
        self.core = run.core
        self.name, self.block, self.halo = name, block, halo

    def edges(self) -> list[tuple[int, str, np.ndarray]]:
        """(neighbour, side as the neighbour sees it, this block's rows it needs)."""
        edges = []
        if self.up is not None:
            edges.append((self.up, "below", self.block[:self.halo]))
        if self.down is not None:
            edges.append((self.down, "above", self.block[-self.halo:]))
        return edges

    @abstractmethod
    def rows(self, step: int, timeout: float) -> tuple[np.ndarray, np.ndarray]:
        """Send this block's edge rows of `step` and return the neighbours' (above, below)."""


class BufferNeighbours(Neighbours):
    """Halo rows as raw buffers on the MPI transport's row communicator."""

    def __init__(self, run: TaskRun, name: str, block: np.ndarray, halo: int,
                 transport: MPITransport) -> None:
        super().__init__(run, name, block, halo)
        self.transport = transport
        shape = (halo, *block.shape[1:])
        nothing = block[:0]
        self.above = nothing if self.up is None else np.empty(shape, block.dtype)
        self.below = nothing if self.down is None else np.empty(shape, block.dtype)

    def rows(self, step: int, timeout: float) -> tuple[np.ndarray, np.ndarray]:
        sends = [(rank, np.ascontiguousarray(rows)) for rank, _, rows in self.edges()]
        receives = [(rank, buffer) for rank, buffer in ((self.up, self.above),
                                                         (self.down, self.below))
                    if rank is not None]
        exchange = self.transport.exchange_rows(sends, receives, step % HALO_TAGS)
        try:
            _poll(self.core, exchange.done, timeout, f"halo rows of step {step}")
        except BaseException:
            exchange.cancel()
            raise
        return self.above, self.below


class MessageNeighbours(Neighbours):
    """Halo rows as HaloRows messages through the rank cores (virtual ranks)."""

    def __init__(self, run: TaskRun, name: str, block: np.ndarray, halo: int) -> None:
        super().__init__(run, name, block, halo)
        self.mailbox = run.executor.feature(HaloMailbox)

    def rows(self, step: int, timeout: float) -> tuple[np.ndarray, np.ndarray]:
        for rank, side, rows in self.edges():
            self.core.transport.send(rank, Kind.HALO, HaloRows(self.name, step, side,
                                                               rows.copy()))
        wanted = {side: (self.name, step, side) for side, rank in (("above", self.up),
                                                                   ("below", self.down))
                  if rank is not None}
        # Threads share the interpreter: a spin would only slow the holder computing.
        self.core.wait_until(lambda: all(key in self.mailbox.rows for key in wanted.values()),
                             timeout, f"halo rows of step {step}")
        nothing = self.block[:0]
        return (self.mailbox.rows.pop(wanted["above"]) if "above" in wanted else nothing,
                self.mailbox.rows.pop(wanted["below"]) if "below" in wanted else nothing)


def iterate_with_halos(run: TaskRun, config: dict) -> None:
    executor = run.executor
    inputs = config.get("Inputs", [])
    if not inputs:
        raise TaskFailed("Run.Iterate needs Inputs, the row-partitioned array first")
    name = inputs[0]
    partition = executor.partitions.get(name)
    if partition is None or partition.mode != ROWS:
        raise TaskFailed(f"Run.Iterate needs '{name}' partitioned by rows on this rank")
    halo = config.get("Halo", 1)
    block = partition.array
    transport = run.core.transport
    neighbours = (BufferNeighbours(run, name, block, halo, transport)
                  if isinstance(transport, MPITransport)
                  else MessageNeighbours(run, name, block, halo))
    if neighbours.edges() and block.shape[0] < halo:
        raise TaskFailed(f"this rank holds {block.shape[0]} row(s) of '{name}', fewer than "
                         f"Halo {halo}: use fewer ranks or a larger array")
    kernel = executor.kernels.get(config["Kernel"])
    base = executor.kernel_arguments(inputs, config.get("Args", {}))
    kernel.check_arguments(set(base) | set(HALO_ARGUMENTS) | set(PARTITION_NAMES))
    binding = kernel.bind(base, HALO_ARGUMENTS)
    timeout = run.timeout(config)
    with run.kernel_calls(config, config["Kernel"]) as around_call:
        for step in range(config["Steps"]):
            above, below = neighbours.rows(step, timeout)
            given = {"above": above, "below": below, "step": step}
            with around_call():
                try:
                    binding.function(*[given[name] for name in binding.names])
                except KERNEL_ERRORS as error:
                    raise kernel.failure(error) from error
    run.log(f"{config['Steps']} steps of {config['Kernel']} done")


def _poll(core: RankCore, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Serve messages until `done()`: polling without sleeping for up to HALO_SPIN seconds,
    then sleeping between polls (pauses doubling from 1 us to HALO_LONGEST_PAUSE).

    The rows come within about a step. A holder that slept got its core back late on a
    busy machine: on 2 shared cores, the heat stencil on 4 ranks took 1.8-4.7 ms per step
    (median 2.9) without the spin and 1.1-2.8 ms (median 1.7) with it, in 5 runs each
    (MPI's Sendrecv, in the hand-written stencil, polls until it is done). The rows do
    not come through the rank core, so its waits (which sleep until a message comes)
    would notice them late: this loop polls both. While it spins it tests the rows at
    every turn but serves the rank core (a probe, its sends, its hooks: several times
    the cost of the test) only every HALO_SERVE_EVERY, so that a holder sharing its core
    with a neighbour that computes gives the core back after a short turn.
    """
    began = time.monotonic()
    served = None
    pause = 1e-6
    while not done():
        now = time.monotonic()
        waited = now - began
        if waited < HALO_SPIN and served is not None and now - served < HALO_SERVE_EVERY:
            os.sched_yield()
            continue
        served = now
        core.check_cancel(f"while waiting for {what}")
        if waited >= timeout:
            raise TaskFailed(f"timed out after {timeout:g} s waiting for {what}")
        if core.serve_once(0):
            continue
        if waited < HALO_SPIN:
            os.sched_yield()
        else:
            time.sleep(pause)
            pause = min(pause * 2, HALO_LONGEST_PAUSE)
