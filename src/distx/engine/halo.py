"""Run.Iterate: step a kernel over a row-partitioned array with halo exchange.

Before each step a holder sends its first `Halo` rows to the holder above and its last rows
to the holder below (point-to-point, worker to worker), then calls the kernel with its own
block plus `above` and `below` (the neighbours' rows; zero rows at the global edges) and
`step`. The kernel updates its block in place; the block stays resident between steps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from distx.engine.core import RankCore
from distx.engine.kernels import PARTITION_NAMES
from distx.engine.protocol import HaloRows, Kind
from distx.engine.taskrun import Executor, TaskRun
from distx.engine.transport import MPITransport
from distx.errors import TaskFailed
from distx.script.model import ROWS

HALO_ARGUMENTS = ("above", "below", "step")
"""What Run.Iterate passes its kernel besides Inputs and Args."""
HALO_SPIN = 5e-3
"""Seconds a holder polls for its neighbours' halo rows before it may sleep."""


class HaloMailbox:
    """Halo rows that arrived from neighbours, until the step that needs them takes them."""

    def __init__(self, executor: Executor) -> None:
        self.rows: dict[tuple[str, int, str], np.ndarray] = {}
        executor.core.register(Kind.HALO, self.on_halo)
        executor.attach(self)

    def on_halo(self, source: int, halo: HaloRows) -> None:
        self.rows[(halo.array, halo.step, halo.side)] = halo.rows


def iterate_with_halos(run: TaskRun, config: dict) -> None:
    executor, core = run.executor, run.core
    mailbox = executor.feature(HaloMailbox)
    inputs = config.get("Inputs", [])
    if not inputs:
        raise TaskFailed("Run.Iterate needs Inputs, the row-partitioned array first")
    name = inputs[0]
    partition = executor.partitions.get(name)
    if partition is None or partition.mode != ROWS:
        raise TaskFailed(f"Run.Iterate needs '{name}' partitioned by rows on this rank")
    holders = executor.info.plan.holders
    position = holders.index(executor.rank)
    up = holders[position - 1] if position > 0 else None
    down = holders[position + 1] if position + 1 < len(holders) else None
    halo = config.get("Halo", 1)
    block = partition.array
    if (up is not None or down is not None) and block.shape[0] < halo:
        raise TaskFailed(f"this rank holds {block.shape[0]} row(s) of '{name}', fewer than "
                         f"Halo {halo}: use fewer ranks or a larger array")
    kernel = executor.kernels.get(config["Kernel"])
    base = executor.kernel_arguments(inputs, config.get("Args", {}))
    kernel.check_arguments(set(base) | set(HALO_ARGUMENTS) | set(PARTITION_NAMES))
    nothing = block[:0]
    for step in range(config["Steps"]):
        if up is not None:
            core.transport.send(up, Kind.HALO, HaloRows(name, step, "below", block[:halo].copy()))
        if down is not None:
            core.transport.send(down, Kind.HALO,
                                HaloRows(name, step, "above", block[-halo:].copy()))
        needed = [(name, step, side) for side, rank in (("above", up), ("below", down))
                  if rank is not None]
        _wait_for_rows(core, lambda needed=needed: all(key in mailbox.rows for key in needed),
                       run.timeout(config), f"halo rows of step {step}")
        above = mailbox.rows.pop((name, step, "above")) if up is not None else nothing
        below = mailbox.rows.pop((name, step, "below")) if down is not None else nothing
        with run.kernel_call(config, config["Kernel"]):
            kernel.call({**base, "above": above, "below": below, "step": step})
    run.log(f"{config['Steps']} steps of {config['Kernel']} done")


def _wait_for_rows(core: RankCore, arrived: Callable[[], bool], timeout: float,
                   what: str) -> None:
    """Poll for the neighbours' rows without sleeping for up to HALO_SPIN seconds, then
    wait as ranks usually do (sleeping between polls after 200 us).

    The rows come within about a step. A holder that slept got its core back late on a
    busy machine: on 2 shared cores, the heat stencil on 4 ranks took 1.8-4.7 ms per step
    (median 2.9) without the spin and 1.1-2.8 ms (median 1.7) with it, in 5 runs each
    (MPI's Sendrecv, in the hand-written stencil, polls until it is done). Ranks
    that are threads of one process share the interpreter, so there a spin would only
    slow the holder computing; they wait as usual.
    """
    if isinstance(core.transport, MPITransport):
        spin_until = time.monotonic() + HALO_SPIN
        while not arrived() and time.monotonic() < spin_until:
            core.check_cancel(f"while waiting for {what}")
            if not core.serve_once(0):
                os.sched_yield()
    core.wait_until(arrived, timeout, what)
