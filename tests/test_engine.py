"""The engine in one process: ranks as threads on a `LocalHub`, no mpiexec, seconds.

The same rank core, task catalogue, sweep and coordinator as an MPI run; only the transport
differs (in-process queues). The MPI tests (test_compute, test_faults, ...) stay.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import h5py
import numba
import numpy as np
import pytest
from conftest import experiments, milestones, text

from distx.engine import ids
from distx.engine.coordinator import Coordinator
from distx.engine.core import RankCore, RunInfo
from distx.engine.data import Partition
from distx.engine.ids import answer_ids, experiment_ids
from distx.engine.protocol import Kind, PeerLost
from distx.engine.rank import preload_kernels, run_as_coordinator, run_as_worker, start_rank
from distx.engine.sweep import BATCH_SECONDS, COORDINATOR_SHARE, IN_FLIGHT, MAX_BATCH, Sweep
from distx.engine.transport import LocalHub, LocalTransport, Message
from distx.errors import TaskFailed
from distx.results.writer import ResultsFile, RunIdentity
from distx.script.grid import Grid
from distx.script.model import ROWS, parse_script
from distx.script.roles import plan_roles
from distx.script.source import Source
from distx.vocabulary import ExitCode, RunState

KERNELS = '''
from pathlib import Path


def double(x):
    return 2.0 * x


def flaky(x, folder):
    """Fails the first time it sees an experiment, succeeds after."""
    marker = Path(folder) / f"seen-{x}"
    if not marker.exists():
        marker.touch()
        raise ValueError(f"first try of {x} fails")
    return 2.0 * x
'''


class RecordingTransport(LocalTransport):
    """Rank 0's transport, noting the size of every batch of sweep tasks it sends."""

    def __init__(self, hub: LocalHub, rank: int) -> None:
        super().__init__(hub, rank)
        self.batches: list[tuple[int, int]] = []  # (holder, task count)

    def send(self, dest: int, kind: Kind, body: object) -> None:
        if kind == Kind.SWEEP_TASKS:
            self.batches.append((dest, len(body.task_ids)))
        super().send(dest, kind, body)


def run_info(tmp_path: Path, text: str, size: int, kernels: str = KERNELS) -> RunInfo:
    """The script `text` for `size` ranks; `kernels.` in it names a fresh copy of `kernels`
    (a kernel module name is taken once per process)."""
    module = f"engine_{uuid.uuid4().hex}"
    (tmp_path / "kernels").mkdir(exist_ok=True)
    (tmp_path / "kernels" / f"{module}.py").write_text(kernels)
    text = text.replace("Kernel: kernels.", f"Kernel: {module}.")
    script = parse_script(Source(str(tmp_path / "script.yml"), text))
    return RunInfo(script, plan_roles(script, size), uuid.uuid4().hex[:8], 30.0, {},
                   ("here",) * size, tmp_path / "temp")


def run_world(tmp_path: Path, text: str, size: int) -> tuple[str, int, RecordingTransport,
                                                              Path]:
    """Run the script on `size` ranks (threads); return state, exit code, rank 0's
    transport and the results file."""
    info = run_info(tmp_path, text, size)
    hub = LocalHub(size)
    transport = RecordingTransport(hub, 0)
    coordinator = start_rank(transport, info)
    output = tmp_path / "results.h5"
    identity = RunIdentity("engine", info.run_id, text, "script.yml", "", dict.fromkeys(
        ("script", "kernels", "data"), ""), {"world_size": size}, ["here"] * size)
    results = ResultsFile.open(output, identity)
    Coordinator(coordinator, results, {})
    others = [start_rank(hub.transport(rank), info) for rank in range(1, size)]
    for executor in (coordinator, *others):  # as launch.py does, before the threads start
        preload_kernels(executor)
    threads = [threading.Thread(target=run_as_worker, args=(executor,), daemon=True)
               for executor in others]
    for thread in threads:
        thread.start()
    state, exit_code = run_as_coordinator(coordinator)
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    results.close(state, exit_code)
    return state, exit_code, transport, output


def sweep_script(kernel: str, count: int, retries: int, args: str = "{}") -> str:
    return f"""
Name: engine
Experiments:
  Keyfields: {{x: {{start: 0, stop: {count}, step: 1}}}}
  Retries: {retries}
Roles:
  coordinator:
    Sequence:
      - Task: Run.Sweep
        Config: {{Kernel: kernels.{kernel}, Args: {args}}}
  workers: {{Ranks: "1-"}}
"""


def test_sweep_batches_grow_with_measured_speed(tmp_path):
    count, holders = 2000, 2
    state, exit_code, transport, output = run_world(
        tmp_path, sweep_script("double", count, 0), holders + 1)
    assert (state, exit_code) == (RunState.FINISHED.value, ExitCode.OK)
    sizes = [size for _, size in transport.batches]
    assert sum(sizes) == count  # every task exactly once
    first = {holder: size for holder, size in reversed(transport.batches)}
    assert set(first.values()) == {1}  # before a holder's speed is known: one task
    assert max(sizes) > 1  # trivial tasks travel many to a message
    with h5py.File(output) as file:
        rows = experiments(file)
    assert set(rows["status"]) == {b"done"}
    assert np.allclose(rows["result"], 2.0 * np.array([int(x) for x in rows["x"]]))


def batch_size(holders: int, message_seconds: float, per_task: float, waiting: int) -> int:
    """What the scheduler hands a holder, given what it measured (no run needed)."""
    sweep = Sweep.__new__(Sweep)
    sweep.holders = tuple(range(1, holders + 1))
    sweep.plan = SimpleNamespace(parts=1)
    sweep.message_seconds, sweep.seconds_per_task = message_seconds, {1: per_task}
    sweep.count, sweep.next_shared, sweep.retry = waiting, 0, deque()
    return sweep._batch_size(1)


def test_batches_hold_about_batch_seconds_of_work_while_rank_0_has_time():
    assert batch_size(1, 50e-6, 0.0, 10**6) == 1              # speed not known yet
    assert batch_size(4, 50e-6, 0.02, 10**6) == int(BATCH_SECONDS / 0.02)
    assert batch_size(4, 50e-6, 1e-7, 10**6) == MAX_BATCH


def test_batches_grow_with_the_holders_so_rank_0_answers_all_of_them():
    """4,096 holders at 50 us a message: each batch must last 0.41 s (half of rank 0's
    time answers them all), 20 tasks of 20 ms rather than BATCH_SECONDS' 2."""
    share = 4096 * 50e-6 / COORDINATOR_SHARE
    assert batch_size(4096, 50e-6, 0.02, 10**7) == int(share / 0.02)


def test_near_the_end_a_batch_is_a_fair_share_but_not_less_than_rank_0_can_answer():
    fair = math.ceil(64 / (IN_FLIGHT * 16))
    assert batch_size(16, 50e-6, 0.02, 64) == fair            # long tasks: balance the end
    bound = int(16 * 50e-6 / COORDINATOR_SHARE / 1e-6)       # 1,600 tasks of 1 us
    assert batch_size(16, 50e-6, 1e-6, 1000) == bound        # not 32: they would wait


def ids_world(tmp_path: Path, answering: tuple[int, ...]) -> tuple[RankCore, LocalHub, Grid]:
    """Rank 0's core of a 3-rank world whose holders `answering` serve id requests in
    threads (the others never answer)."""
    info = run_info(tmp_path, sweep_script("double", 1000, 0), 3)
    hub = LocalHub(3)
    grid = info.script.experiments.grid()
    for rank in answering:
        core, answered = RankCore(hub.transport(rank), info), threading.Event()
        core.register(Kind.IDS_REQUEST, lambda source, request, core=core, answered=answered: (
            answer_ids(core, grid, source, request), answered.set()))
        threading.Thread(target=core.wait_until, args=(answered.is_set, 30, "a request"),
                         daemon=True).start()
    return RankCore(hub.transport(0), info), hub, grid


@pytest.fixture
def shared_ids(monkeypatch):
    """Ids shared with the holders however few there are."""
    monkeypatch.setattr(ids, "SHARED_FROM", 1)
    monkeypatch.setattr(ids, "SLICE", 1)


def asked(rank0: RankCore, grid: Grid, positions: np.ndarray) -> np.ndarray | None:
    """experiment_ids in a thread: None if it does not return within 30 s (it waits for a
    holder that never answers)."""
    found: list[np.ndarray] = []
    asking = threading.Thread(target=lambda: found.append(experiment_ids(rank0, grid, positions)),
                              daemon=True)
    asking.start()
    asking.join(timeout=30)
    return found[0] if found else None


def test_holders_compute_the_ids_of_their_slices(tmp_path, shared_ids):
    rank0, _, grid = ids_world(tmp_path, (1, 2))
    positions = np.arange(0, 1000, 3)              # a shard's selection, say
    assert np.array_equal(experiment_ids(rank0, grid, positions), grid.id_column(positions))


def test_rank_0_leaves_every_slice_of_ids_to_the_holders(tmp_path, shared_ids, monkeypatch):
    """Rank 0's CPU is the sweep's scarcest: while the holders answer it computes none."""
    rank0, _, grid = ids_world(tmp_path, (1, 2))
    computing = []
    id_column = Grid.id_column
    monkeypatch.setattr(Grid, "id_column", lambda self, indices=None: (
        computing.append(threading.current_thread().name), id_column(self, indices))[1])
    positions = np.arange(1000)
    assert np.array_equal(experiment_ids(rank0, grid, positions), id_column(grid, positions))
    assert len(computing) == 2 and threading.current_thread().name not in computing


def test_rank_0_computes_the_slice_of_a_holder_lost_before_it_answered(tmp_path, shared_ids):
    rank0, hub, grid = ids_world(tmp_path, (1,))
    hub.inboxes[0].put(Message(2, Kind.PEER_LOST, PeerLost(2)))   # as the transport says it
    positions = np.arange(1000)
    assert np.array_equal(asked(rank0, grid, positions), grid.id_column(positions))
    assert 2 in rank0.lost


def test_no_holder_gets_fewer_than_a_slice_of_ids(tmp_path, monkeypatch):
    """1,000 ids in slices of at least 600: one holder computes them all (rank 2 never
    answers, so asking it would hang)."""
    monkeypatch.setattr(ids, "SHARED_FROM", 1)
    monkeypatch.setattr(ids, "SLICE", 600)
    rank0, _, grid = ids_world(tmp_path, (1,))
    positions = np.arange(1000)
    assert np.array_equal(asked(rank0, grid, positions), grid.id_column(positions))


def test_a_sweep_with_ids_from_the_holders_records_the_grids_ids(tmp_path, shared_ids):
    state, _, transport, output = run_world(tmp_path, sweep_script("double", 500, 0), 3)
    assert state == RunState.FINISHED.value
    with h5py.File(output) as file:
        rows = experiments(file)
    grid = Grid({"x": list(range(500))})
    assert rows["id"].tolist() == grid.id_column().tolist()


def test_sweep_retries_a_failed_task(tmp_path):
    args = "{folder: " + str(tmp_path) + "}"
    state, exit_code, _, output = run_world(tmp_path, sweep_script("flaky", 6, 1, args), 3)
    assert (state, exit_code) == (RunState.FINISHED.value, ExitCode.OK)
    with h5py.File(output) as file:
        rows, attempts = experiments(file), file["attempts"][()]
    assert set(rows["status"]) == {b"done"} and set(rows["attempts"]) == {2}
    assert len(attempts) == 12 and sorted(attempts["status"]) == [b"done"] * 6 + [b"error"] * 6


def test_sweep_records_error_when_retries_are_used_up(tmp_path):
    args = "{folder: " + str(tmp_path) + "}"
    state, exit_code, _, output = run_world(tmp_path, sweep_script("flaky", 4, 0, args), 3)
    assert (state, exit_code) == (RunState.FINISHED.value, ExitCode.FAILED)
    with h5py.File(output) as file:
        rows, errors = experiments(file), file["errors"][()]
    assert set(rows["status"]) == {b"error"} and set(rows["attempts"]) == {1}
    assert sorted(errors["id"].tolist()) == sorted(rows["id"].tolist())   # joined by id
    assert all("first try" in text(error) for error in errors["error"])


STENCIL = """
import numba


@numba.njit
def smooth(grid, above, below, alpha):
    grid[:] *= alpha
"""

ITERATE = """
Name: engine
Distributed: True
Data:
  grid: {Generate: {Distribution: uniform, Shape: [8, 4]}, Partition: rows}
Roles:
  coordinator: {Sequence: []}
  workers:
    Sequence:
      - Task: Run.Iterate
        Config: {Kernel: kernels.smooth, Inputs: [grid], Steps: 2, Args: {alpha: 0.5}}
"""


def test_a_holder_loads_its_iterate_kernel_before_the_run(tmp_path):
    """Numba compiles (or loads from its cache) a kernel on its first call with new types;
    in Run.Iterate's first step that made one holder twice as slow as one process."""
    info = run_info(tmp_path, ITERATE, 2, kernels=STENCIL)
    holder = start_rank(LocalHub(2).transport(1), info)
    block = np.zeros((8, 4))
    holder.partitions = {"grid": Partition("grid", block, 0, block.shape, ROWS)}
    preload_kernels(holder)
    kernel = holder.kernels.get(info.script.roles["workers"].sequence[0].kernel)
    assert kernel.function.signatures == [(numba.typeof(block),) * 3 + (numba.float64,)]


TWO_ROLES = """
Name: engine
Roles:
  coordinator: {Sequence: []}
  side: {Sequence: []}
"""


def two_cores(tmp_path: Path) -> list[RankCore]:
    info = run_info(tmp_path, TWO_ROLES, 2)
    hub = LocalHub(2)
    return [RankCore(hub.transport(rank), info) for rank in range(2)]


def test_value_request_waits_for_publish_and_replies(tmp_path):
    asker, publisher = two_cores(tmp_path)
    asker.register(Kind.EVENT, lambda source, event: None)  # rank 0 records nothing here
    publisher.register(Kind.EVENT, lambda source, event: None)
    done = threading.Event()

    def publish_later() -> None:
        publisher.wait_until(lambda: publisher.pending_requests != [], 30, "the request")
        publisher.publish("answer", np.arange(3))
        publisher.wait_until(done.is_set, 30, "the end")
    thread = threading.Thread(target=publish_later, daemon=True)
    thread.start()
    value = asker.get_values("answer", (1,), 30)
    assert np.array_equal(value[0], np.arange(3))
    with pytest.raises(TaskFailed, match="'answer' is not published on this rank"):
        asker.get_values("answer", (0,), 1)
    done.set()
    thread.join(timeout=10)


def test_value_never_published_fails_the_asker_naming_why(tmp_path):
    asker, publisher = two_cores(tmp_path)
    publisher.register(Kind.EVENT, lambda source, event: None)
    done = threading.Event()

    def end_without_publishing() -> None:
        publisher.wait_until(lambda: publisher.pending_requests != [], 30, "the request")
        publisher.end_sequence(RunState.FINISHED, "")
        publisher.wait_until(done.is_set, 30, "the end")
    thread = threading.Thread(target=end_without_publishing, daemon=True)
    thread.start()
    with pytest.raises(TaskFailed, match="rank 1 \\(side\\) cannot give 'never': it "
                       "reached Finished without publishing 'never'"):
        asker.get_values("never", (1,), 30)
    done.set()
    thread.join(timeout=10)


@pytest.mark.parametrize("wait", ["milestone", "value"])
def test_a_dead_peer_wakes_its_waiters_at_once(tmp_path, wait):
    waiter, peer = two_cores(tmp_path)
    peer.register(Kind.EVENT, lambda source, event: None)
    done = threading.Event()

    def fail_soon() -> None:
        time.sleep(0.2)
        peer.end_sequence(RunState.ERRORED, "the kernel blew up")
        peer.wait_until(done.is_set, 30, "the end")
    thread = threading.Thread(target=fail_soon, daemon=True)
    thread.start()
    began = time.monotonic()
    with pytest.raises(TaskFailed, match="rank 1 \\(side\\) errored .*: the kernel blew up"):
        if wait == "milestone":
            waiter.wait_for_milestone("Ready", (1,), 30)
        else:
            waiter.get_values("answer", (1,), 30)
    assert time.monotonic() - began < 10  # woken by the milestone, not by the timeout
    done.set()
    thread.join(timeout=10)


CANCEL = """
Name: engine
Roles:
  coordinator: {Sequence: []}
  failing:
    Ranks: 1
    Sequence:
      - Task: Run.CliExecute
        Config: {Parameters: "exit 3"}
  sleeping:
    Ranks: 2
    Sequence:
      - Task: Run.Delay
        Config: {Time: 60}
"""


def test_an_error_cancels_ranks_still_in_their_sequence(tmp_path):
    began = time.monotonic()
    state, exit_code, _, output = run_world(tmp_path, CANCEL, 3)
    assert time.monotonic() - began < 20  # the 60 s delay was cancelled
    assert (state, exit_code) == (RunState.ERRORED.value, ExitCode.FAILED)
    with h5py.File(output) as file:
        reached = milestones(file)
    assert reached[1][-1] == RunState.ERRORED.value
    assert reached[2][-1] == RunState.CANCELLED.value
