"""Run.Iterate: step a kernel over a row-partitioned array with halo exchange.

Before each step a holder sends its first `Halo` rows to the holder above and its last rows
to the holder below (point-to-point, worker to worker), then calls the kernel with its own
block plus `above` and `below` (the neighbours' rows; zero rows at the global edges) and
`step`. The kernel updates its block in place; the block stays resident between steps.
"""

from __future__ import annotations

import numpy as np

from distx.engine.kernels import PARTITION_NAMES
from distx.engine.protocol import HaloRows, Kind
from distx.engine.taskrun import Executor, TaskRun
from distx.errors import TaskFailed

HALO_ARGUMENTS = ("above", "below", "step")
"""What Run.Iterate passes its kernel besides Inputs and Args."""


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
    if partition is None or partition.mode != "rows":
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
        core.wait_until(lambda needed=needed: all(key in mailbox.rows for key in needed),
                        run.timeout(config), f"halo rows of step {step}")
        above = mailbox.rows.pop((name, step, "above")) if up is not None else nothing
        below = mailbox.rows.pop((name, step, "below")) if down is not None else nothing
        with run.kernel_call(config, config["Kernel"]):
            kernel.call({**base, "above": above, "below": below, "step": step})
    run.log(f"{config['Steps']} steps of {config['Kernel']} done")
