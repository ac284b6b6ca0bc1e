"""The coordinator against N simulated holders: does its cost grow with the holder count?

Rank 0 runs the real thing: the Run.Sweep task with its scheduler (`Sweep`), the
experiments table and the results store (journal and checkpoints in a real file). Only its
transport is simulated: `SimulatedHolders` answers every SWEEP_START with SWEEP_READY,
every SWEEP_TASKS batch at once with a BatchResult, as N holders whose kernel takes
`task_seconds` would, and every request for experiment ids with unique stand-ins (the
holders' share of the ids is their work, not rank 0's). No other process runs, so rank
0's CPU time is all the cost there is, and anything it does per holder on every message
shows as growth with N.
"""

from __future__ import annotations

import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from distx.bench import benchkernels
from distx.engine.coordinator import Coordinator
from distx.engine.core import RunInfo
from distx.engine.protocol import BatchResult, IdsReply, Kind, SweepReady, SweepTasks
from distx.engine.rank import run_sequence, start_rank
from distx.engine.sweep import COORDINATOR_CPU, SET_UP_CPU
from distx.engine.transport import Message, Transport
from distx.results.writer import ResultsFile, RunIdentity
from distx.script.model import parse_script
from distx.script.roles import plan_roles
from distx.script.source import Source
from distx.vocabulary import RunState

SWEEP_SCRIPT = """\
Version: 2
Name: bench-{kernel}
Kernels: {kernels}
Experiments:
  Keyfields:
    seed: {{stop: {count}}}
{sequence}"""
"""The bench's sweep: `count` experiments of a kernel of benchkernels (the real runs and
the simulation measure the same sweep), run by one of the two sequences below."""

ALONE = """\
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: benchkernels.{kernel}}}
"""

STARTED = """\
Roles:
  coordinator:
    Sequence:
      - {{Task: Remote.WaitForMilestone, Config: {{Milestone: started}}}}
      - Task: Run.Sweep
        Config: {{Kernel: benchkernels.{kernel}}}
  workers:
    Sequence:
      - {{Task: Run.AddMilestone, Config: {{Milestone: started}}}}
"""
"""The sweep starts once every holder has started (imported Python, MPI and the kernel's
module), as MPIPoolExecutor.map is timed after a warm-up map; the ranks' start-up is the
start-up case's."""


def sweep_script(count: int, kernel: str = "trivial", started: bool = False) -> str:
    sequence = (STARTED if started else ALONE).format(kernel=kernel)
    return SWEEP_SCRIPT.format(kernels=Path(benchkernels.__file__).parent, count=count,
                               kernel=kernel, sequence=sequence)


class SimulatedHolders(Transport):
    """Rank 0's side of a world whose other ranks are holders that answer at once."""

    def __init__(self, size: int, task_seconds: float) -> None:
        self.rank = 0
        self.size = size
        self.task_seconds = task_seconds
        self.inbox: deque[Message] = deque()
        self.batches = 0

    def send(self, dest: int, kind: Kind, body: object) -> None:
        if kind == Kind.SWEEP_START:
            self.inbox.append(Message(dest, Kind.SWEEP_READY, SweepReady(body.number, None)))
        elif kind == Kind.SWEEP_TASKS:
            self.batches += 1
            self.inbox.append(Message(dest, Kind.SWEEP_RESULTS, self._results(body)))
        elif kind == Kind.IDS_REQUEST:   # unique stand-ins: the real ones are a holder's work
            self.inbox.append(Message(dest, Kind.IDS_REPLY, IdsReply(
                body.number, body.positions.astype("S16"))))
        # milestones and controls for the simulated ranks: nobody reads them

    def _results(self, tasks: SweepTasks) -> BatchResult:
        count = len(tasks.task_ids)
        now = np.full(count, time.time())
        return BatchResult(tasks.number, tasks.task_ids, np.ones(count, dtype=bool), now, now,
                           {"result": tasks.task_ids * 2.0}, {}, {},
                           count * self.task_seconds)

    def receive(self, timeout: float | None) -> Message | None:
        return self.inbox.popleft() if self.inbox else None

    def close(self, until: float | None = None) -> bool:
        return True

    def abort(self, exit_code: int) -> None:
        raise RuntimeError(f"the simulated run aborted with exit code {exit_code}")


@dataclass
class Simulated:
    holders: int
    experiments: int
    batches: int
    cpu_seconds: float     # rank 0's process CPU time during the Run.Sweep task
    set_up_seconds: float  # the part of it before the first batch (ids, table)

    @property
    def per_experiment(self) -> float:
        return self.cpu_seconds / self.experiments

    @property
    def per_batch(self) -> float:
        return self.cpu_seconds / self.batches


def simulate(holders: int, experiments: int, task_seconds: float = 1e-6,
             folder: Path | None = None) -> Simulated:
    """One sweep of `experiments` trivial experiments on `holders` simulated holders;
    every experiment must end up `done` in the results file."""
    with tempfile.TemporaryDirectory(prefix="distx-simulation-", dir=folder) as temporary:
        where = Path(temporary)
        text = sweep_script(experiments)
        script = parse_script(Source(str(where / "simulated.yml"), text))
        size = holders + 1
        info = RunInfo(script, plan_roles(script, size), "simulated", 600.0, {},
                       ("simulated",) * size, where / "temp", progress="off")
        transport = SimulatedHolders(size, task_seconds)
        executor = start_rank(transport, info)
        identity = RunIdentity(script.name, info.run_id, text, "simulated.yml", "",
                               dict.fromkeys(("script", "kernels", "data"), ""),
                               {"world_size": size}, list(info.hosts))
        results = ResultsFile.open(where / "simulated.h5", identity)
        Coordinator(executor, results, {})
        state = run_sequence(executor)
        results.close(state, 0)
        done = results.table.counts().get("done", 0)
        if state != RunState.FINISHED.value or done != experiments:
            raise RuntimeError(f"the simulated sweep ended {state} with {done} of "
                               f"{experiments} experiments done")
        return Simulated(holders, experiments, transport.batches,
                         *sweep_cpu_seconds(results.path))


def sweep_cpu_seconds(output: Path) -> tuple[float, float]:
    """Rank 0's process CPU time during the last sweep of a results file and the part of it
    before the first batch, as the sweep logged them (its last line: "... coordinator CPU
    0.123 s, ...; of which set-up 0.045 s")."""
    with h5py.File(output, "r") as file:
        messages = [message.decode() for message in file["logs"]["message"]
                    if COORDINATOR_CPU.encode() in message]
    return tuple(float(messages[-1].split(label)[1].split()[0])
                 for label in (COORDINATOR_CPU, SET_UP_CPU))
