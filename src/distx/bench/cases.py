"""Benchmark cases that run under mpiexec: distx and its raw-mpi4py reference, same run.

`python -m distx.bench.cases CASE JSON_ARGS` is launched by `distx bench`; rank 0 prints
one JSON line with the figures. The distx side uses the real rank core (transport, milestone
and value handling, a coordinator writing a results file), not a mock.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distx.engine import data
from distx.engine.coordinator import Coordinator
from distx.engine.core import RunInfo
from distx.engine.rank import start_rank
from distx.engine.taskrun import Executor
from distx.engine.transport import MPITransport
from distx.results.provenance import new_run_id
from distx.results.store import ResultsFile, RunIdentity
from distx.script.model import parse_script
from distx.script.roles import plan_roles
from distx.script.source import Source
from distx.vocabulary import ExitCode, RunState

PEERS = """\
Version: 2
Name: bench
Distributed: True
Roles:
  coordinator: {Sequence: []}
  peer: {Sequence: []}
"""


def _rank(comm: MPI.Comm, folder: Path) -> Executor:
    """A real rank on every rank; rank 0 with a coordinator writing a results file."""
    script = parse_script(Source(str(folder / "bench.yml"), PEERS))
    run_id = comm.bcast(new_run_id() if comm.rank == 0 else None)
    plan = plan_roles(script, comm.size)
    info = RunInfo(script, plan, run_id, 600.0, {}, ("bench",) * comm.size, folder / run_id)
    executor = start_rank(MPITransport(comm), info)
    if comm.rank != 0:
        return executor
    identity = RunIdentity("bench", run_id, PEERS, "bench.yml", "", dict.fromkeys(
        ("script", "kernels", "data"), ""), {"world_size": comm.size}, ["bench"] * comm.size)
    results = ResultsFile.open(folder / f"bench-{run_id}.h5", identity)
    Coordinator(executor, results, {})
    return executor


def _ping_pong(comm: MPI.Comm, message: np.ndarray, repeats: int) -> float:
    """Half the round trip of a raw Send/Recv, in seconds."""
    reply = np.empty_like(message)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        if comm.rank == 0:
            comm.Send(message, dest=1)
            comm.Recv(reply, source=1)
        elif comm.rank == 1:
            comm.Recv(reply, source=0)
            comm.Send(message, dest=0)
    return (time.perf_counter() - start) / repeats / 2


def milestone_latency(comm: MPI.Comm, folder: Path, repeats: int) -> dict:
    raw = _ping_pong(comm, np.zeros(64, dtype=np.uint8), repeats)
    executor = _rank(comm, folder)
    core = executor.core
    me, other = comm.rank, 1 - comm.rank
    comm.Barrier()
    start = time.perf_counter()
    for i in range(repeats):
        if me == 1:
            core.reach(f"ping{i}")
            core.wait_for_milestone(f"pong{i}", (other,), 60)
        elif me == 0:
            core.wait_for_milestone(f"ping{i}", (other,), 60)
            core.reach(f"pong{i}")
    distx = (time.perf_counter() - start) / repeats / 2
    _finish(executor, comm)
    return {"distx": distx, "raw": raw}


def value_round_trip(comm: MPI.Comm, folder: Path, repeats: int, megabytes: int) -> dict:
    array = np.arange(megabytes * (1 << 20) // 8, dtype=np.float64)
    raw_scalar = _raw_request_reply(comm, np.array([42.0]), repeats)
    raw_array = _raw_request_reply(comm, array, max(3, repeats // 100))
    executor = _rank(comm, folder)
    core = executor.core
    figures = {"raw_scalar": raw_scalar, "raw_array": raw_array}
    if comm.rank == 1:
        core.publish("scalar", 42.0)
        core.publish("array", array)
    comm.Barrier()
    if comm.rank == 0:
        for key, count in (("scalar", repeats), ("array", max(3, repeats // 100))):
            core.get_values(key, (1,), 60)  # the first includes nothing special; warm
            start = time.perf_counter()
            for _ in range(count):
                value = core.get_values(key, (1,), 60)[0]
            figures[f"distx_{key}"] = (time.perf_counter() - start) / count
            assert np.array_equal(value, 42.0 if key == "scalar" else array)
        core.reach("done")
    else:
        core.wait_for_milestone("done", (0,), 600)
    _finish(executor, comm)
    return figures


def _raw_request_reply(comm: MPI.Comm, payload: np.ndarray, repeats: int) -> float:
    """Rank 0 asks, rank 1 answers with `payload`, received into a fresh buffer."""
    request = np.zeros(1, dtype=np.int64)
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        if comm.rank == 0:
            comm.Send(request, dest=1)
            received = np.empty_like(payload)
            comm.Recv(received, source=1)
        elif comm.rank == 1:
            comm.Recv(request, source=0)
            comm.Send(payload, dest=0)
    return (time.perf_counter() - start) / repeats


def distribution(comm: MPI.Comm, folder: Path, megabytes: int) -> dict:
    rows = megabytes * (1 << 20) // 8 // 8
    whole = np.random.default_rng(0).random((rows, 8)) if comm.rank == 0 else None
    holders = tuple(range(1, comm.size))
    blocks = data.row_blocks(rows, len(holders))
    counts = [0] + [(stop - start) * 8 for start, stop in blocks]
    displacements = [0] + [start * 8 for start, _ in blocks]
    mine = np.empty((counts[comm.rank] // 8, 8)) if comm.rank else np.empty((0, 8))
    comm.Barrier()
    start = time.perf_counter()
    comm.Scatterv([whole, counts, displacements, MPI.DOUBLE] if comm.rank == 0 else None, mine)
    comm.Barrier()
    raw = time.perf_counter() - start
    executor = _rank(comm, folder)
    core = executor.core
    layout = [data.Layout("table", (rows, 8), "<f8", "rows")]
    comm.Barrier()
    start = time.perf_counter()
    partitions = data.distribute(core.transport, layout, holders,
                                 {"table": whole} if comm.rank == 0 else None, core.dispatch)
    comm.Barrier()
    distx = time.perf_counter() - start
    if comm.rank:
        assert np.array_equal(partitions["table"].array, mine)
    _finish(executor, comm)
    return {"distx": distx, "raw": raw, "bytes": rows * 8 * 8}


def _finish(executor: Executor, comm: MPI.Comm) -> None:
    comm.Barrier()
    if executor.rank == 0:
        executor.feature(Coordinator).results.close(RunState.FINISHED.value, ExitCode.OK)


CASES = {"latency": milestone_latency, "value": value_round_trip, "distribution": distribution}


def main() -> None:
    case, arguments = sys.argv[1], json.loads(sys.argv[2])
    comm = MPI.COMM_WORLD
    folder = tempfile.mkdtemp(prefix="distx-bench-") if comm.rank == 0 else None
    folder = Path(comm.bcast(folder))
    figures = CASES[case](comm, folder, **arguments)
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
