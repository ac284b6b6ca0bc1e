"""`distx bench [--ranks N] [--quick] [--json FILE]`: distx against the obvious alternatives.

Every case measures distx and its reference in the same invocation and reports the
ratio distx / reference (for rates: reference / distx, so that > 1 is always "distx
slower") next to its target. Figures depend on the machine; nothing here is pass/fail.
The cases launch their own `mpiexec` runs of real scripts and of `distx.bench.cases`.

The kernels are real modules: the benchmark's own (`benchkernels.py`) and the shipped
example kernels (`examples_folder()`), so that the figures are those of the examples.
"""

from __future__ import annotations

import compileall
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distx.bench import benchkernels
from distx.bench.peers import INSTALL_HINT, missing_peers
from distx.bench.simulation import simulate, sweep_cpu_seconds, sweep_script
from distx.engine.kernels import KernelLibrary
from distx.script.examples import examples_folder

BENCH_KERNELS = Path(benchkernels.__file__).parent
HEAT_COLUMNS = 512
PEER = [sys.executable, "-m", "distx.bench.peers"]

FUTURES_MAP = '''\
import json, sys, time
from mpi4py.futures import MPIPoolExecutor
from distx.bench.benchkernels import trivial

if __name__ == "__main__":
    count, chunksize = int(sys.argv[1]), int(sys.argv[2])
    with MPIPoolExecutor() as executor:
        list(executor.map(trivial, range(64), chunksize=chunksize))
        start = time.perf_counter()
        results = list(executor.map(trivial, range(count), chunksize=chunksize))
        print(json.dumps({"seconds": time.perf_counter() - start, "count": len(results)}))
'''

HAND_WRITTEN_PI = '''\
import sys, time
import h5py
import numpy as np
from mpi4py import MPI
sys.path.insert(0, sys.argv[1])
from montecarlo import estimate_pi

comm = MPI.COMM_WORLD
seeds, samples = int(sys.argv[2]), int(sys.argv[3])
work = [(seed, samples) for seed in range(seeds)] if comm.rank == 0 else None
mine = comm.scatter([work[r::comm.size] for r in range(comm.size)] if comm.rank == 0 else None)
results = [(seed, n, estimate_pi(seed, n)) for seed, n in mine]
gathered = comm.gather(results)
if comm.rank == 0:
    rows = np.array(sorted(r for part in gathered for r in part),
                    dtype=[("seed", "i8"), ("samples", "i8"), ("pi", "f8")])
    with h5py.File(sys.argv[4], "w") as file:
        file["experiments"] = rows
'''

HAND_WRITTEN_STENCIL = '''\
import json, sys, time
import numpy as np
from mpi4py import MPI
sys.path.insert(0, sys.argv[1])
from heat import diffuse

comm = MPI.COMM_WORLD
rows, columns, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# Rank 0 holds nothing, as distx's coordinator, and waits without spinning.
holders = comm.Split(0 if comm.rank else MPI.UNDEFINED, comm.rank)
if comm.rank == 0:
    done = comm.Ibarrier()
    while not done.Test():
        time.sleep(0.001)
    print(json.dumps({"seconds": max(comm.gather(0.0))}))
else:
    me, count = holders.rank, holders.size
    start, stop = rows * me // count, rows * (me + 1) // count
    block = np.random.default_rng(me).random((stop - start, columns))
    up = me - 1 if me > 0 else MPI.PROC_NULL
    down = me + 1 if me + 1 < count else MPI.PROC_NULL
    from_up, from_down = np.empty((1, columns)), np.empty((1, columns))
    above = from_up if up != MPI.PROC_NULL else block[:0]
    below = from_down if down != MPI.PROC_NULL else block[:0]
    diffuse(block.copy(), above, below, 0.2)  # load the compiled kernel
    holders.Barrier()
    begin = time.perf_counter()
    for step in range(steps):
        holders.Sendrecv(block[:1], dest=up, recvbuf=from_down, source=down)
        holders.Sendrecv(block[-1:], dest=down, recvbuf=from_up, source=up)
        diffuse(block, above, below, 0.2)
    seconds = time.perf_counter() - begin
    comm.Ibarrier().Wait()
    comm.gather(seconds)
'''


@dataclass
class Row:
    case: str
    distx: float
    reference: float
    unit: str
    reference_name: str
    target: str

    @property
    def ratio(self) -> float:
        """distx / reference for times, reference / distx for rates: > 1 means slower."""
        if self.unit.endswith("/s"):
            return self.reference / self.distx if self.distx else float("inf")
        return self.distx / self.reference if self.reference else float("inf")


class Bench:
    def __init__(self, ranks: int, quick: bool, folder: Path) -> None:
        self.ranks = ranks
        self.quick = quick
        self.folder = folder
        self.examples = examples_folder() / "kernels"
        self.rows: list[Row] = []
        self.notes: list[str] = []

    # ----- running things ------------------------------------------------------------------
    def mpiexec(self, ranks: int, *command: str, timeout: float = 1800) -> tuple[str, float]:
        return self.execute([_mpiexec(), "-n", str(ranks), *command], timeout=timeout)

    def execute(self, command: list[str], cwd: Path | None = None,
                timeout: float = 1800) -> tuple[str, float]:
        """Run `command` in the bench's folder (or `cwd`): its stdout and wall seconds."""
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              cwd=cwd or self.folder)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return done.stdout, seconds

    def case(self, ranks: int, name: str, **arguments: object) -> dict:
        stdout, _ = self.mpiexec(ranks, sys.executable, "-m", "distx.bench.cases", name,
                                 json.dumps(arguments))
        return json.loads(stdout.strip().splitlines()[-1])

    def script(self, name: str, body: str) -> Path:
        path = self.folder / f"{name}.yml"
        path.write_text(textwrap.dedent(body).replace("EXAMPLES", str(self.examples))
                        .replace("BENCH_KERNELS", str(BENCH_KERNELS)))
        return path

    def output_of(self, script: Path, ranks: int) -> Path:
        """Where run_distx writes the results of `script` on `ranks` ranks."""
        return self.folder / f"{script.stem}-{ranks}.h5"

    def run_distx(self, ranks: int, script: Path, *extra: str) -> tuple[Path, float]:
        output = self.output_of(script, ranks)
        command = [sys.executable, "-m", "distx", str(script), "-o", str(output),
                   "--overwrite", *extra]
        if ranks == 1:
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=self.folder)
            return output, time.perf_counter() - start
        _, seconds = self.mpiexec(ranks, *command)
        return output, seconds

    @staticmethod
    def task_seconds(output: Path, task: str) -> float:
        """How long `task` took: its slowest rank (Run.Iterate runs on every holder)."""
        with h5py.File(output, "r") as file:
            rows = file["tasks"][()]
        rows = rows[rows["task"] == task.encode()]
        return float((rows["end"] - rows["start"]).max())

    def task_time(self, ranks: int, script: Path, task: str) -> float:
        """Run `script` on `ranks` ranks; how long its `task` took (task_seconds)."""
        return self.task_seconds(self.run_distx(ranks, script)[0], task)

    def add(self, *row: object) -> None:
        self.rows.append(Row(*row))
        print(f"  {self.rows[-1].case}: done", file=sys.stderr, flush=True)

    # ----- the cases -------------------------------------------------------------------------
    def latency(self) -> None:
        repeats = 2000 if self.quick else 20000
        figures = self.case(2, "latency", repeats=repeats)
        self.add("milestone latency (2 ranks)", figures["distx"] * 1e6, figures["raw"] * 1e6,
                 "us", "raw Send/Recv ping-pong", "<= 10x")

    def values(self) -> None:
        megabytes = 8 if self.quick else 64
        figures = self.case(2, "value", repeats=1000 if self.quick else 5000,
                            megabytes=megabytes)
        self.add("GetValue scalar round trip", figures["distx_scalar"] * 1e6,
                 figures["raw_scalar"] * 1e6, "us", "raw request + Send/Recv", "<= 10x")
        self.add(f"GetValue {megabytes} MiB array round trip", figures["distx_array"] * 1e3,
                 figures["raw_array"] * 1e3, "ms", "raw request + Send/Recv", "<= 1.2x")

    def distribution(self) -> None:
        ranks = min(self.ranks, 4) if self.quick else 8
        megabytes = 128 if self.quick else 1024
        figures = self.case(ranks, "distribution", megabytes=megabytes)
        self.add(f"Partition rows {megabytes} MiB to {ranks - 1} workers",
                 figures["distx"] * 1e3, figures["raw"] * 1e3, "ms", "raw Scatterv",
                 "<= 1.25x")

    def sweep_script(self, count: int, kernel: str = "trivial") -> Path:
        path = self.folder / f"sweep-{kernel}-{count}.yml"
        path.write_text(sweep_script(count, kernel, started=True))
        return path

    def recorded_sweep(self, ranks: int, count: int) -> tuple[float, float, float]:
        """(recorded experiments per second of the Run.Sweep task, rank 0's process CPU
        seconds per experiment during it, the part of that before the first batch) of a
        sweep of `count` trivial experiments."""
        output, _ = self.run_distx(ranks, self.sweep_script(count))
        cpu, set_up = sweep_cpu_seconds(output)
        return count / self.task_seconds(output, "Run.Sweep"), cpu / count, set_up / count

    def sweep_throughput(self) -> tuple[float, float, float]:
        """The recorded sweep against MPIPoolExecutor.map, medians of runs in turns (a
        change in the machine's load hits both sides); returns, on 4 ranks, recorded
        experiments per second, rank 0's CPU seconds per experiment and the set-up's part."""
        count = 20000 if self.quick else 200000
        futures = self.folder / "futures_map.py"
        futures.write_text(FUTURES_MAP)
        on_4_ranks = None
        repeats, chunksizes = (1 if self.quick else 3), (1, 64, 256)
        for ranks in (4,) if self.quick else (4, 8):
            (rate, cpu, set_up), *map_rates = medians_in_turns(
                repeats, functools.partial(self.recorded_sweep, ranks, count),
                *(functools.partial(self.map_rate, ranks, futures, count, chunksize)
                  for chunksize in chunksizes))
            on_4_ranks = on_4_ranks or (rate, cpu, set_up)
            for chunksize, map_rate in zip(chunksizes, map_rates):
                target = ">= 10x faster" if chunksize == 1 else ">= 1x"
                self.add(f"sweep {count} recorded experiments, {ranks} ranks", rate, map_rate,
                         "tasks/s", f"MPIPoolExecutor.map chunksize {chunksize} (records "
                         "nothing)", target)
            self.notes.append(f"sweep on {ranks} ranks: {rate:,.0f} recorded experiments/s; "
                              f"rank 0 CPU per recorded experiment {_us(cpu)} (target <= 2 "
                              f"us), of which set-up {_us(set_up)} (ids, the new table); "
                              f"medians of {repeats} runs")
        return on_4_ranks

    def map_rate(self, ranks: int, futures: Path, count: int, chunksize: int) -> float:
        """Tasks per second of MPIPoolExecutor.map over the trivial kernel (5,000 tasks at
        chunksize 1, which takes a second already)."""
        count = min(count, 5000) if chunksize == 1 else count
        stdout, _ = self.mpiexec(ranks, sys.executable, "-m", "mpi4py.futures", str(futures),
                                 str(count), str(chunksize))
        measured = json.loads(stdout.strip().splitlines()[-1])
        return measured["count"] / measured["seconds"]

    def many_ranks(self) -> None:
        """The same sweep on 64 ranks of this machine (oversubscribed: holders share the
        cores, waiting ranks sleep)."""
        count = 200000
        rate, cpu, set_up = self.recorded_sweep(64, count)
        self.notes.append(f"sweep on 64 ranks (63 holders, oversubscribed): {rate:,.0f} "
                          f"recorded experiments/s; rank 0 CPU per recorded experiment "
                          f"{_us(cpu)}, of which set-up {_us(set_up)}")

    def coordinator_simulation(self) -> None:
        """Rank 0's real scheduler, table and store against N simulated holders that
        answer at once (distx.bench.simulation): the cost per experiment must not grow
        with N. Each holder gets at least `per_holder` experiments, so that batches are
        as long as the scheduler makes them rather than cut by a fair share of too few."""
        base, per_holder = (20000, 10) if self.quick else (200000, 100)
        for task_seconds, described in ((1e-6, "trivial tasks"), (0.02, "20 ms tasks")):
            for holders in (1, 16, 256, 4096):
                count = max(base, per_holder * holders)
                simulated = simulate(holders, count, task_seconds, self.folder)
                # against the holders' own time: above 100 %, they would wait for rank 0
                busy = "" if task_seconds < 1e-3 else (
                    f"; rank 0 busy {simulated.cpu_seconds / (count * task_seconds / holders):.0%}"
                    " of the holders' time")
                self.notes.append(
                    f"simulated {holders} holders, {count} {described}: rank 0 CPU "
                    f"{_us(simulated.per_experiment)} per experiment (set-up "
                    f"{_us(simulated.set_up_seconds / count)}), "
                    f"{simulated.per_batch * 1e6:.0f} us per result message "
                    f"({count / simulated.batches:.1f} experiments each){busy}")
            print(f"  coordinator simulation, {described}: done", file=sys.stderr, flush=True)

    def array_sweep(self) -> None:
        """The same sweep returning a 50-element array per experiment instead of a number
        (issue 17: within 1.5x), and the file's size against the arrays' raw bytes. The
        number comes from the same work (`ramp_end`); against the trivial kernel's sweep,
        which makes no array at all, the ratio is in a note."""
        count = 20000
        scripts = [self.sweep_script(count, kernel) for kernel in ("ramp_end", "ramp",
                                                                    "trivial")]
        number_seconds, array_seconds, trivial_seconds = medians_in_turns(  # sub-second runs
            1 if self.quick else 3, *(functools.partial(self.task_time, 4, script, "Run.Sweep")
                                      for script in scripts))
        self.add(f"sweep {count} experiments of 50-element arrays, 4 ranks", array_seconds,
                 number_seconds, "s", "the same sweep returning one number of each array",
                 "<= 1.5x")
        self.notes.append(f"array sweep against the trivial kernel's number sweep (no array "
                          f"made): {array_seconds:.3f} s against {trivial_seconds:.3f} s "
                          f"({array_seconds / trivial_seconds:.2f}x)")
        output = self.output_of(scripts[1], 4)
        size, raw = output.stat().st_size, _raw_bytes(output)
        self.notes.append(f"array sweep file: {size / 1e6:.1f} MB for {raw / 1e6:.1f} MB of "
                          f"raw bytes in its datasets ({size / raw:.2f}x, target <= 1.3x)")

    def kernels_speed(self) -> None:
        count_inside = KernelLibrary(self.examples).get("montecarlo.count_inside").function
        values = np.random.default_rng(0).random(2_000_000 if self.quick else 20_000_000)
        points = np.random.default_rng(1).random((1_000_000 if self.quick else 10_000_000, 2))
        cases = [("sum of squares", lambda: benchkernels.sum_squares(values),
                  lambda: float(np.sum(values * values)), "numpy np.sum(x * x)"),
                 ("Monte Carlo pi count", lambda: count_inside(points, 1.0),
                  lambda: int(np.count_nonzero((points ** 2).sum(axis=1) <= 1.0)),
                  "numpy (x**2).sum(1) <= 1")]
        for name, kernel, reference, described in cases:
            kernel()
            self.add(f"kernel: {name}", _best(kernel) * 1e3, _best(reference) * 1e3, "ms",
                     described, "<= 1x")

    def end_to_end(self) -> None:
        seeds, samples = (32, 200_000) if self.quick else (96, 2_000_000)
        ranks = min(self.ranks, 4)
        script = self.pi_script(seeds, samples)
        program = self.folder / "hand_written_pi.py"
        program.write_text(HAND_WRITTEN_PI)

        def hand_written() -> float:
            return self.mpiexec(ranks, sys.executable, str(program), str(self.examples),
                                str(seeds), str(samples), str(self.folder / "hand.h5"))[1]

        self.run_distx(ranks, script)  # fill numba's cache of each (they are not shared)
        hand_written()
        distx, reference = medians_in_turns(3, lambda: self.run_distx(ranks, script)[1],
                                            hand_written)
        self.add(f"end-to-end pi sweep, {ranks} ranks (wall)", distx, reference, "s",
                 "hand-written mpi4py script", "<= 1.2x")

    def pi_script(self, seeds: int, samples: int) -> Path:
        return self.script(f"pi-{seeds}-{samples}", f"""\
            Version: 2
            Name: bench-pi
            Kernels: EXAMPLES
            Experiments:
              Keyfields:
                seed: {{stop: {seeds}}}
                samples: [{samples}]
            Sequence:
              - Task: Run.Sweep
                Config: {{Kernel: montecarlo.estimate_pi, Outputs: [pi]}}
            """)

    def oversubscription(self) -> None:
        # Long enough that the start-up of five more processes (imports, numba's cache)
        # does not dominate: the case is about waiting ranks leaving the CPU to workers.
        seeds, samples = (24, 400_000) if self.quick else (64, 8_000_000)
        script = self.pi_script(seeds, samples)
        self.run_distx(3, script)
        times = {ranks: self.task_time(ranks, script, "Run.Sweep") for ranks in (3, 8)}
        self.add("CPU-bound sweep on 8 ranks (2 cores)", times[8], times[3], "s",
                 "the same sweep on 3 ranks", "<= 1.3x")

    def startup(self) -> None:
        script = self.script("trivial", """\
            Version: 2
            Name: trivial
            Sequence:
              - {Task: Run.Message, Config: {Message: hello}}
            """)
        # The median of 7 holds when single runs swing by 10-20 %.
        distx, reference = medians_in_turns(
            3 if self.quick else 7, lambda: self.run_distx(4, script)[1],
            lambda: self.mpiexec(4, sys.executable, "-c", "from mpi4py import MPI")[1])
        self.add("start-up, 4 ranks (wall)", distx, reference, "s",
                 "mpiexec python -c 'from mpi4py import MPI'", "<= 3x")

    def scaling(self) -> None:
        seeds, samples = (16, 400_000) if self.quick else (64, 2_000_000)
        counts = (1, 2, 4) if self.quick else (1, 2, 4, 8)
        self.run_distx(2, self.pi_script(seeds, samples))  # compile the kernels once
        strong = {ranks: self.task_time(ranks, self.pi_script(seeds, samples), "Run.Sweep")
                  for ranks in counts}
        weak = {ranks: self.task_time(ranks, self.pi_script(seeds // 4 * _workers(ranks),
                                                            samples), "Run.Sweep")
                for ranks in counts}
        for ranks in counts:
            workers = _workers(ranks)
            self.notes.append(
                f"pi sweep on {ranks} rank(s) ({workers} worker(s)): strong {strong[ranks]:.2f} s,"
                f" efficiency {strong[1] / (strong[ranks] * workers):.0%}; weak "
                f"{weak[ranks]:.2f} s, efficiency {weak[1] / weak[ranks]:.0%}")
        grid = self.heat_script(400 if self.quick else 2000, 100)
        self.run_distx(2, grid)
        stencil = {ranks: self.task_time(ranks, grid, "Run.Iterate") for ranks in counts}
        for ranks in counts:
            workers = _workers(ranks)
            self.notes.append(f"heat stencil on {ranks} rank(s): {stencil[ranks]:.2f} s, "
                              f"efficiency {stencil[1] / (stencil[ranks] * workers):.0%}")

    def heat_script(self, rows: int, steps: int) -> Path:
        """The heat example's stencil on a rows x 512 grid, `steps` steps of Run.Iterate.

        The holders start together (milestones `ready` and `go`, as the hand-written
        stencil's Barrier): a holder's first step would otherwise also wait for its
        neighbours' start-up, which is not the cost of a step."""
        return self.script(f"heat-{rows}-{steps}", f"""\
            Version: 2
            Name: bench-heat
            Distributed: True
            Kernels: EXAMPLES
            Data:
              grid:
                Generate: {{Distribution: uniform, Shape: [{rows}, {HEAT_COLUMNS}]}}
                Partition: rows
            Roles:
              coordinator:
                Sequence:
                  - {{Task: Remote.WaitForMilestone, Config: {{Milestone: ready}}}}
                  - {{Task: Run.AddMilestone, Config: {{Milestone: go}}}}
              workers:
                Sequence:
                  - {{Task: Run.AddMilestone, Config: {{Milestone: ready}}}}
                  - {{Task: Remote.WaitForMilestone, Config: {{Milestone: go}}}}
                  - Task: Run.Iterate
                    Config: {{Kernel: heat.diffuse, Inputs: [grid], Steps: {steps},
                              Args: {{alpha: 0.2}}}}
            """)

    def iterate(self) -> None:
        """Run.Iterate against the same stencil written by hand (Sendrecv of the halo rows,
        the same numba kernel, grid and steps) on the same ranks: time per step, the
        median of `repeats` runs of each, run in turns (the machine's noise changes within
        seconds; a few seconds each). Seven runs each: with three, one slow run on a
        shared machine moved the ratio at 3 and 4 ranks between 0.99x and 1.44x."""
        rows, steps, repeats = (400, 100, 1) if self.quick else (2000, 300, 7)
        script = self.heat_script(rows, steps)
        program = self.folder / "hand_written_stencil.py"
        program.write_text(HAND_WRITTEN_STENCIL)

        def hand_written(ranks: int) -> float:
            stdout, _ = self.mpiexec(ranks, sys.executable, str(program), str(self.examples),
                                     str(rows), str(HEAT_COLUMNS), str(steps))
            return json.loads(stdout.strip().splitlines()[-1])["seconds"]
        for ranks in (2, 3, 4):
            seconds, reference = medians_in_turns(
                repeats, functools.partial(self.task_time, ranks, script, "Run.Iterate"),
                functools.partial(hand_written, ranks))
            self.add(f"Run.Iterate heat step {rows}x{HEAT_COLUMNS}, {ranks} ranks",
                     seconds / steps * 1e3, reference / steps * 1e3, "ms",
                     "hand-written mpi4py Sendrecv stencil", "<= 1.2x")

    def peers(self, rate: float) -> None:
        """libEnsemble and PyExperimenter on the sweep case's experiments (see peers.py),
        against distx's recorded experiments per second on 4 ranks. They run fewer
        experiments: at their rate the sweep case's count would take minutes."""
        ranks, workers = 4, _workers(4)
        count = 400 if self.quick else 5000
        self.peer(rate, f"libEnsemble, {count} simulations, MPI comms, {ranks} ranks",
                  [_mpiexec(), "-n", str(ranks), *PEER, "libensemble", str(count)], count)
        count = 100 if self.quick else 1000
        for jobs in sorted({1, workers}):
            folder = self.folder / f"pyexperimenter-{jobs}"  # its database: a new one
            folder.mkdir()
            self.peer(rate, f"PyExperimenter, {count} experiments, SQLite, {jobs} job(s)",
                      [*PEER, "pyexperimenter", str(count), str(jobs)], count, folder)

    def peer(self, rate: float, peer: str, command: list[str], count: int,
             cwd: Path | None = None) -> None:
        """Run a peer: its row (no target: for the record) and a note with its rate and
        distx's ratio. A peer that fails is noted with the end of its error, not fatal:
        PyExperimenter's jobs can fail on SQLite's lock ("database is locked")."""
        try:
            stdout, _ = self.execute(command, cwd=cwd)
        except RuntimeError as failure:
            stderr = str(failure).splitlines()[1:]  # after "COMMAND failed:"
            last = [line.strip() for line in stderr if line.strip()][-3:]
            self.notes.append(f"{peer}: failed: {' '.join(last)}")
            return
        measured = json.loads(stdout.strip().splitlines()[-1])
        peer_rate = measured["count"] / measured["seconds"]
        self.add("trivial experiments recorded, 4 ranks", rate, peer_rate, "tasks/s", peer,
                 "(peer)")
        self.notes.append(f"{peer}: {peer_rate:,.0f} experiments/s; distx records "
                          f"{rate / peer_rate:,.0f}x as many per second")
        if measured["count"] < count:
            self.notes.append(f"{peer}: {count - measured['count']} of {count} experiments "
                              "did not end done")

    def coordinator_model(self, cost: float, set_up: float) -> None:
        """What rank 0's CPU per recorded experiment (4 ranks) means for many workers: once
        the sweep runs, each experiment costs it what is not set-up."""
        running = cost - set_up
        self.notes.append(f"coordinator cost per recorded experiment: {_us(cost)}, of which "
                          f"{_us(running)} while the sweep runs, so one coordinator keeps busy "
                          "about " + ", ".join(
                              f"{duration / running:,.0f} workers with {label} tasks"
                              for duration, label in ((1e-3, "1 ms"), (2e-2, "20 ms"),
                                                      (1e-1, "100 ms"), (1.0, "1 s"))))


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} us"


def _raw_bytes(path: Path) -> int:
    """The bytes of every dataset's elements (a variable-length one: its references)."""
    sizes: list[int] = []
    with h5py.File(path, "r") as file:
        file.visititems(lambda _, item: sizes.append(item.size * item.dtype.itemsize)
                        if isinstance(item, h5py.Dataset) else None)
    return sum(sizes)


def _workers(ranks: int) -> int:
    return max(1, ranks - 1)


def medians_in_turns(repeats: int, *measures: Callable[[], Any]) -> list[Any]:
    """Each of `measures` `repeats` times, one of each in turn, so that a change in the
    machine's load hits every side; the median of each (field by field, for a measure
    that returns a tuple)."""
    runs = [[measure() for measure in measures] for _ in range(repeats)]
    return [tuple(map(statistics.median, zip(*side))) if isinstance(side[0], tuple)
            else statistics.median(side) for side in zip(*runs)]


def _best(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else (shutil.which("mpiexec") or "mpiexec")


def run_bench(ranks: int = 8, quick: bool = False, json_path: str | None = None,
              peers: bool = False) -> str:
    """Run every case (with `peers`: also libEnsemble and PyExperimenter, if installed)
    and return the table."""
    missing = missing_peers() if peers else []
    if missing:
        print(f"distx bench: --peers needs {' and '.join(missing)}: {INSTALL_HINT}; "
              "running the other cases", file=sys.stderr, flush=True)
    _compile_distx()
    with tempfile.TemporaryDirectory(prefix="distx-bench-") as folder:
        bench = Bench(ranks, quick, Path(folder))
        for case in (bench.latency, bench.values, bench.distribution, bench.kernels_speed,
                     bench.end_to_end, bench.oversubscription, bench.startup, bench.scaling,
                     bench.iterate, bench.array_sweep):
            case()
        rate, cost, set_up = bench.sweep_throughput()
        bench.coordinator_model(cost, set_up)
        bench.coordinator_simulation()
        if not quick:
            bench.many_ranks()
        if peers and not missing:
            bench.peers(rate)
    table = format_table(bench.rows, bench.notes)
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"quick": quick, "rows": [{**asdict(row), "ratio": row.ratio} for row in bench.rows],
             "notes": bench.notes}, indent=2))
    return table


def _compile_distx() -> None:
    """Write distx's bytecode files, as pip does when it installs distx from a wheel.

    Run from a checkout (an editable install) with PYTHONDONTWRITEBYTECODE=1, every rank
    of every run compiled distx's ~50 modules again (0.1-0.3 s of CPU per rank here), which
    no installed distx does; the start-up and end-to-end cases measured that. A folder
    that cannot be written is left as it is."""
    compileall.compile_dir(Path(__file__).resolve().parents[1], quiet=2)  # distx/


def format_table(rows: list[Row], notes: list[str]) -> str:
    header = f"{'case':48} {'distx':>12} {'reference':>12} {'unit':>8} {'ratio':>7}  target"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.case:48} {row.distx:12.3f} {row.reference:12.3f} {row.unit:>8} "
                     f"{row.ratio:7.2f}  {row.target} vs {row.reference_name}")
    return "\n".join([*lines, "", *notes])
