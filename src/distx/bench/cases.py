"""Benchmark cases that run under mpiexec: distx and its raw-mpi4py reference, same run.

`python -m distx.bench.cases CASE JSON_ARGS` is launched by `distx bench`; rank 0 prints
one JSON line with the figures. The distx side uses the real rank core (transport, milestone
and value handling, a coordinator writing a results file), not a mock.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from distx.engine import data
from distx.engine.coordinator import Coordinator
from distx.engine.core import RankCore, RunInfo
from distx.engine.protocol import Kind, ValueRequest
from distx.engine.rank import start_rank
from distx.engine.taskrun import Executor
from distx.engine.transport import MPITransport
from distx.results.provenance import new_run_id
from distx.results.writer import ResultsFile, RunIdentity
from distx.script.model import ROWS, parse_script
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


BLOCKS = 20
"""Latency and round trips are measured in this many blocks, distx's and raw's in turn,
and each side reports the median block: on a shared machine the speed of the same exchange
changes several times over within seconds (64 MiB raw round trips: 25-96 ms in three runs
of one minute), so two sides measured one after the other compare two moments."""


def milestone_latency(comm: MPI.Comm, folder: Path, repeats: int) -> dict:
    raw_comm = comm.Dup()  # the raw side never meets the rank core's messages
    executor = _rank(comm, folder)
    core = executor.core
    me, other = comm.rank, 1 - comm.rank
    count = max(1, repeats // BLOCKS)
    raw, distx = [], []
    for block in range(BLOCKS):
        raw.append(_ping_pong(raw_comm, np.zeros(64, dtype=np.uint8), count))
        raw_comm.Barrier()
        start = time.perf_counter()
        for i in range(block * count, (block + 1) * count):
            if me == 1:
                core.reach(f"ping{i}")
                core.wait_for_milestone(f"pong{i}", (other,), 60)
            elif me == 0:
                core.wait_for_milestone(f"ping{i}", (other,), 60)
                core.reach(f"pong{i}")
        distx.append((time.perf_counter() - start) / count / 2)
    _finish(executor, comm)
    return {"distx": statistics.median(distx), "raw": statistics.median(raw)}


def value_round_trip(comm: MPI.Comm, folder: Path, repeats: int, megabytes: int) -> dict:
    """GetValue of a scalar and of an array from rank 1, against a raw request and
    Send/Recv of the same payload, in turns (see BLOCKS)."""
    array = np.arange(megabytes * (1 << 20) // 8, dtype=np.float64)
    raw_comm = comm.Dup()
    executor = _rank(comm, folder)
    core = executor.core
    answered = _count_answers(core) if comm.rank == 1 else []
    if comm.rank == 1:
        core.publish("scalar", 42.0)
        core.publish("array", array)
    figures = {}
    for key, payload, count in (("scalar", np.array([42.0]), repeats),
                                ("array", array, max(BLOCKS, repeats // 100))):
        per_block = max(1, count // BLOCKS)
        raw, distx = [], []
        for _ in range(-1, BLOCKS):  # the first (-1) warms both sides up
            raw.append(_raw_request_reply(raw_comm, payload, per_block))
            if comm.rank == 0:
                start = time.perf_counter()
                for _ in range(per_block):
                    value = core.get_values(key, (1,), 60)[0]
                distx.append((time.perf_counter() - start) / per_block)
                assert np.array_equal(value, payload if key == "array" else 42.0)
            else:
                wanted = len(answered) + per_block
                core.wait_until(lambda wanted=wanted: len(answered) >= wanted, 60,
                                "the value requests")
        figures[f"raw_{key}"] = statistics.median(raw[1:])
        if comm.rank == 0:
            figures[f"distx_{key}"] = statistics.median(distx[1:])
    _finish(executor, comm)
    return figures


def _count_answers(core: RankCore) -> list:
    """A list that grows by one for every value request this rank core answers."""
    answered: list = []
    answer = core.handlers[Kind.VALUE_REQUEST]

    def counting(source: int, request: ValueRequest) -> None:
        answer(source, request)
        answered.append(request.request_id)
    core.register(Kind.VALUE_REQUEST, counting)
    return answered


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
    layout = [data.Layout("table", (rows, 8), "<f8", ROWS)]
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
    executor.core.transport.close()  # its last sends complete before MPI finalizes
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
