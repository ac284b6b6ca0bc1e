"""A dead worker does not end the run (issue 15): fault-tolerant MPI under Open MPI.

Under Open MPI started with ULFM (`mpirun --with-ft ulfm ...`, FAULT_TOLERANT below) a
worker rank that dies during a sweep is recorded Errored ("rank N on host H died"), its
tasks in flight go back on the queue as `lost` attempts, a dead holder's row partition
moves to a survivor, and the sweep completes with the table of a run without the fault.
Ranks die by SIGKILL: from inside a kernel at a chosen seed (tests/kernels/dying.py), or
from outside at a random moment. Under MPICH, which has no working ULFM, the same faults
check the unchanged behaviour instead: the launcher ends the job, `--resume` finishes it.
The full campaign of random moments is tests/campaigns/ulfm_campaign.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, distx, experiments, mpiexec, open_mpi_launcher, text
from test_durability import kill_everything, rank_pids, wait_for
from test_engine import run_info, sweep_script

from distx.engine.coordinator import Coordinator
from distx.engine.protocol import Kind, PeerLost
from distx.engine.rank import preload_kernels, run_as_coordinator, run_as_worker, start_rank
from distx.engine.transport import (
    LocalHub,
    Message,
    fault_tolerant,
    prepare_fault_tolerance,
)
from distx.results.writer import ResultsFile, RunIdentity
from distx.vocabulary import ExitCode, RunState

ULFM = ["--with-ft", "ulfm", "--mca", "btl", "tcp,self", "--mca", "pml", "ob1",
        "--prtemca", "errmgr_detector_heartbeat_period", "1",
        "--prtemca", "errmgr_detector_heartbeat_timeout", "2"]
"""The launch options that make a run fault-tolerant (README, "Faults")."""

ROWS = 2000003  # rows of the table in ulfm_rows.yml
RUN_SECONDS = 120


def ulfm_available() -> bool:
    """Open MPI's launcher (the openmpi extra): the ULFM checks run; else (MPICH) the
    checks of unchanged behaviour."""
    return open_mpi_launcher()


def command(script: Path, output: Path, ranks: int, *sets: str, resume: bool = False,
            ulfm: bool = True) -> list[str]:
    """The launch line; with ULFM's options when `ulfm` and the launcher has them."""
    launcher = [*mpiexec(), *ULFM] if ulfm and ulfm_available() else mpiexec()
    options = [option for setting in sets for option in ("--set", setting)]
    return [*launcher, "-n", str(ranks), sys.executable, "-m", "distx", str(script),
            "--output", str(output), "--progress", "off", *options,
            *(["--resume"] if resume else [])]


def run(script: Path, output: Path, ranks: int, *sets: str, resume: bool = False,
        ulfm: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command(script, output, ranks, *sets, resume=resume, ulfm=ulfm),
                          capture_output=True,
                          text=True, timeout=RUN_SECONDS, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def expected_results(script: str, seeds: int) -> np.ndarray:
    """The result column of an uninterrupted run, from the kernels' definitions."""
    seed = np.arange(seeds)
    if script == "ulfm_sweep.yml":
        return seed * seed
    table = np.random.default_rng(4).integers(0, 1000, (ROWS, 3), dtype=np.int64)
    return int(table.sum()) * seed + ROWS


@dataclass
class Outcome:
    """What a run left in its results file, for the checks below."""

    table: np.ndarray
    attempts: np.ndarray
    milestones: np.ndarray
    fault_tolerant: str

    @classmethod
    def read(cls, output: Path) -> Outcome:
        with h5py.File(output, "r") as file:
            return cls(experiments(file), file["attempts"][()], file["milestones"][()],
                       text(file.attrs["fault_tolerant"]))

    def lost(self) -> np.ndarray:
        return self.attempts[self.attempts["status"] == b"lost"]

    def died(self) -> dict[int, str]:
        """Rank -> cause of the Errored milestones that say a rank died."""
        return {int(row["rank"]): text(row["detail"]) for row in self.milestones
                if text(row["name"]) == "Errored" and text(row["detail"]).endswith(" died")}


def check_survived(result: subprocess.CompletedProcess, output: Path, script: str,
                   seeds: int, victims: set[int]) -> Outcome:
    """The run completed as if nothing died, and says who did."""
    assert result.returncode == 0, result.stderr
    outcome = Outcome.read(output)
    assert outcome.fault_tolerant == "yes"
    table = outcome.table
    assert (table["status"] == b"done").all()
    assert table["seed"].tolist() == list(range(seeds))
    assert table["result"].tolist() == expected_results(script, seeds).tolist()
    done = Counter((row["id"], int(row["part"])) for row in outcome.attempts
                   if row["status"] == b"done")
    assert set(done.values()) == {1}, "a task recorded done twice"
    assert set(outcome.lost()["rank"].tolist()) <= victims
    assert set(outcome.died()) == victims
    for rank in victims:
        assert f"rank {rank} on host " in outcome.died()[rank]
        assert f"lost rank {rank} " in result.stderr
    shown = distx("show", output).stdout
    assert all(f"rank {rank} on host " in shown for rank in victims), shown
    return outcome


def check_unchanged(result: subprocess.CompletedProcess, output: Path, script: str,
                    seeds: int, *sets: str, deaths: int = 1, tolerant: str = "no") -> None:
    """Without ULFM a dead rank ends the job; --resume (once per death) finishes the run.
    A kill before the sweep made its table leaves a file without one (CI once met it)."""
    for _ in range(deaths):
        assert result.returncode != 0
        with h5py.File(output, "r") as file:   # killed early, it may have no table yet
            assert text(file.attrs["fault_tolerant"]) == tolerant
        assert distx("recover", output).returncode == 0
        result = run(SCRIPTS / script, output, 3, *sets, resume=True, ulfm=False)
    assert result.returncode == 0, result.stderr
    table = Outcome.read(output).table
    assert (table["status"] == b"done").all()
    assert table["result"].tolist() == expected_results(script, seeds).tolist()


def recovery_seconds(outcome: Outcome, killed_at: float) -> float | None:
    """From the kill to the first task put back on the queue running on a survivor."""
    lost = {(row["id"], int(row["part"])) for row in outcome.lost()}
    restarts = [row["start"] for row in outcome.attempts if row["status"] == b"done"
                and (row["id"], int(row["part"])) in lost]
    return min(restarts) - killed_at if restarts else None


def detection_seconds(outcome: Outcome, killed_at: float) -> float | None:
    """From the kill to rank 0 recording the first dead rank's Errored milestone."""
    times = [row["time"] for row in outcome.milestones
             if text(row["name"]) == "Errored" and text(row["detail"]).endswith(" died")]
    return min(times) - killed_at if times else None


def marker_time(markers: Path) -> float:
    """When the first rank that killed itself did (its marker file was made just before)."""
    return min(path.stat().st_mtime for path in markers.iterdir())


# ----- a worker dies inside a kernel at a chosen seed -------------------------------------
@pytest.mark.parametrize("script, seeds", [("ulfm_sweep.yml", 80), ("ulfm_rows.yml", 40)])
def test_worker_dying_mid_sweep(tmp_path, script, seeds):
    output, markers = tmp_path / "out.h5", tmp_path / "markers"
    markers.mkdir()
    sets = ("die_at=12", f"markers={markers}")
    result = run(SCRIPTS / script, output, 4, *sets)
    if not ulfm_available():
        check_unchanged(result, output, script, seeds, *sets)
        return
    outcome = Outcome.read(output)
    victims = set(outcome.died())
    assert len(victims) == 1
    outcome = check_survived(result, output, script, seeds, victims)
    lost = outcome.lost()
    assert len(lost) >= 1 and set(lost["rank"].tolist()) == victims
    # lost attempts count against no Retries (the script allows none) and run once more
    assert outcome.table["attempts"].max() == 2
    assert recovery_seconds(outcome, marker_time(markers)) is not None


def test_without_ulfm_a_dead_worker_ends_the_job(tmp_path):
    """Open MPI launched without --with-ft ulfm, or MPICH: unchanged behaviour."""
    output, markers = tmp_path / "out.h5", tmp_path / "markers"
    markers.mkdir()
    sets = ("die_at=12", f"markers={markers}")
    result = run(SCRIPTS / "ulfm_sweep.yml", output, 4, *sets, ulfm=False)
    check_unchanged(result, output, "ulfm_sweep.yml", 80, *sets)


def test_workers_dying_one_after_another(tmp_path):
    output, markers = tmp_path / "out.h5", tmp_path / "markers"
    markers.mkdir()
    sets = ("die_at=8 25", f"markers={markers}")
    result = run(SCRIPTS / "ulfm_rows.yml", output, 4, *sets)
    if not ulfm_available():
        check_unchanged(result, output, "ulfm_rows.yml", 40, *sets, deaths=2)
        return
    victims = set(Outcome.read(output).died())
    assert len(victims) == 2
    check_survived(result, output, "ulfm_rows.yml", 40, victims)


def test_every_holder_dead_ends_the_run_and_resume_finishes_it(tmp_path):
    output, markers = tmp_path / "out.h5", tmp_path / "markers"
    markers.mkdir()
    sets = ("die_at=5 6", f"markers={markers}")  # 3 ranks: both holders die
    result = run(SCRIPTS / "ulfm_sweep.yml", output, 3, *sets)
    if not ulfm_available():
        check_unchanged(result, output, "ulfm_sweep.yml", 80, *sets, deaths=2)
        return
    assert result.returncode == 1, result.stderr
    assert "every holder died (ranks [1, 2])" in result.stderr
    outcome = Outcome.read(output)
    assert set(outcome.died()) == {1, 2}
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Errored"
    table = outcome.table
    assert set(table["status"]) <= {b"done", b"created"}  # nothing left running
    done = table[table["status"] == b"done"]
    assert (done["result"] == done["seed"] ** 2).all()
    resumed = run(SCRIPTS / "ulfm_sweep.yml", output, 3, *sets, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert Outcome.read(output).table["result"].tolist() == \
        expected_results("ulfm_sweep.yml", 80).tolist()


def ended_errored(tmp_path: Path, script: str) -> tuple[subprocess.CompletedProcess,
                                                        list[tuple[int, str]]] | None:
    """Run `script` (a rank dies in it) on 4 ranks. Without ULFM the job fails: None.
    Under ULFM the run ends Errored within 60 s: the run and its tasks' (rank, error)."""
    output, markers = tmp_path / "out.h5", tmp_path / "markers"
    markers.mkdir()
    began = time.monotonic()
    result = run(SCRIPTS / script, output, 4, f"markers={markers}")
    if not ulfm_available():
        assert result.returncode != 0
        return None
    assert time.monotonic() - began < 60
    assert result.returncode == 1, result.stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Errored"
        return result, [(int(row["rank"]), text(row["error"])) for row in file["tasks"][()]
                        if text(row["error"])]


def test_dead_rank_in_a_role_sequence_ends_the_run(tmp_path):
    """Waiters fail at once naming the dead rank (the script's waits allow 600 s)."""
    ended = ended_errored(tmp_path, "ulfm_roles.yml")
    if ended is None:
        return
    result, failed = ended
    errors = dict(failed)
    assert "rank 2 (workers) errored without reaching milestone Worked: rank 2 on host " \
        in errors[0]
    assert "died" in errors[0] and "timed out" not in errors[0]
    assert "lost rank 2 (workers): rank 2 on host " in result.stderr


def test_dead_neighbour_in_run_iterate_ends_the_run(tmp_path):
    """Holders waiting for a dead neighbour's halo rows (raw buffers, not messages) do not
    wait out their 600 s: the run ends Errored, naming the dead rank."""
    ended = ended_errored(tmp_path, "ulfm_iterate.yml")
    if ended is None:
        return
    result, failed = ended
    assert "lost rank 2 (workers): rank 2 on host " in result.stderr
    assert not any("timed out" in error for _, error in failed)


# ----- SIGKILL from outside ---------------------------------------------------------------
def run_and_kill(script: str, output: Path, victims: tuple[int, ...],
                 delay: float) -> tuple[subprocess.CompletedProcess, float]:
    """Run `script` on 4 ranks and SIGKILL `victims` at once, `delay` s after rank 0 made
    the results file (0-0.05 s: while rank 0 distributes the data); returns the run and
    the kill time."""
    job = subprocess.Popen(command(SCRIPTS / script, output, 4), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: output.exists() and len(rank_pids(str(output))) == 4, 60)
        time.sleep(delay)
        pids, killed_at = rank_pids(str(output)), time.time()
        for victim in victims:
            with contextlib.suppress(KeyError, ProcessLookupError):  # the run is over
                os.kill(pids[victim], signal.SIGKILL)
        stdout, stderr = job.communicate(timeout=RUN_SECONDS)
    finally:
        kill_everything(job, output)  # nothing left behind if the run hung
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr), killed_at


def kill_at_random_moment(tmp_path: Path, seed: int) -> tuple[float, Outcome | None]:
    """One run of either sweep, a random worker SIGKILLed 0-1.6 s after the results file
    appears: while rank 0 distributes the data partitions, mid-sweep or during the last
    batches (the sweep takes about 1.5 s here; a kill may also come after the end).
    Returns the kill time and the outcome, checked; None as outcome under MPICH (checked
    unchanged)."""
    chooser = random.Random(seed)
    script, seeds = chooser.choice([("ulfm_sweep.yml", 80), ("ulfm_rows.yml", 40)])
    victim, delay = chooser.randint(1, 3), chooser.uniform(0.0, 1.6)
    output = tmp_path / f"out-{seed}.h5"
    result, killed_at = run_and_kill(script, output, (victim,), delay)
    if not ulfm_available():
        if result.returncode != 0:  # else the kill came after the run
            check_unchanged(result, output, script, seeds)
        return killed_at, None
    outcome = Outcome.read(output)
    check_survived(result, output, script, seeds, set(outcome.died()))
    assert set(outcome.died()) <= {victim}
    return killed_at, outcome


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_at_a_random_moment(tmp_path, seed):
    kill_at_random_moment(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 22))
def test_kill_at_random_moments_campaign(tmp_path, seed):
    kill_at_random_moment(tmp_path, seed)


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.02, 0.03])
def test_worker_killed_while_rank0_sends_its_partition(tmp_path, delay):
    """The first 16 MB row partitions are in flight: rank 0 once deadlocked inside Open
    MPI's TCP transport here, and a worker crashed sending a milestone to the killed one
    (transport.ULFM_SETTINGS); now the run goes on."""
    output = tmp_path / "out.h5"
    result, _ = run_and_kill("ulfm_rows.yml", output, (2,), delay)
    if not ulfm_available():  # the launcher ends the job (perhaps before any experiment)
        assert result.returncode != 0
        return
    check_survived(result, output, "ulfm_rows.yml", 40, {2})


def test_worker_killed_at_start_up(tmp_path):
    """Before its sequence and before any data (a sweep without Data): the run goes on."""
    output = tmp_path / "out.h5"
    result, _ = run_and_kill("ulfm_sweep.yml", output, (2,), 0.0)
    if not ulfm_available():
        check_unchanged(result, output, "ulfm_sweep.yml", 80)
        return
    check_survived(result, output, "ulfm_sweep.yml", 80, {2})


def test_two_workers_killed_at_once(tmp_path):
    output = tmp_path / "out.h5"
    result, _ = run_and_kill("ulfm_rows.yml", output, (1, 3), 1.0)
    if not ulfm_available():
        check_unchanged(result, output, "ulfm_rows.yml", 40)
        return
    check_survived(result, output, "ulfm_rows.yml", 40, {1, 3})


def test_rank0_dying_ends_the_job_as_without_ulfm(tmp_path):
    """The results file's only writer cannot be replaced: the job ends, --resume."""
    output = tmp_path / "out.h5"
    result, _ = run_and_kill("ulfm_sweep.yml", output, (0,), 1.0)
    if ulfm_available():
        assert "rank 0 died; ending the job" in result.stderr
    check_unchanged(result, output, "ulfm_sweep.yml", 80,
                    tolerant="yes" if ulfm_available() else "no")


# ----- start-up ---------------------------------------------------------------------------
def test_fault_tolerance_skips_the_finalize_fence_only_under_ulfm():
    environment = {"OMPI_MCA_mpi_ft_enable": "1"}
    assert prepare_fault_tolerance(environment)
    assert environment["OMPI_MCA_async_mpi_finalize"] == "1"
    assert environment["OMPI_MCA_mpi_preconnect_mpi"] == "1"
    chosen = {"OMPI_MCA_mpi_ft_enable": "1", "OMPI_MCA_async_mpi_finalize": "0",
              "OMPI_MCA_btl_tcp_flags": "send,put", "OMPI_MCA_mpi_preconnect_mpi": "0"}
    assert not prepare_fault_tolerance(chosen) and chosen["OMPI_MCA_async_mpi_finalize"] == "0"
    assert chosen["OMPI_MCA_btl_tcp_flags"] == "send,put"
    plain: dict[str, str] = {}
    assert not prepare_fault_tolerance(plain) and not plain


def test_fault_tolerance_sends_large_messages_without_tcp_put():
    """Open MPI's emulated RDMA put over TCP deadlocked rank 0 when the receiver of a
    large message died during the transfer (transport.ULFM_SETTINGS)."""
    environment = {"OMPI_MCA_mpi_ft_enable": "1"}
    assert prepare_fault_tolerance(environment)
    flags = environment["OMPI_MCA_btl_tcp_flags"].split(",")
    assert "send" in flags and "put" not in flags


def test_fault_tolerance_is_detected_from_the_launch():
    open_mpi = "Open MPI v5.0.11, package: Open MPI"
    assert fault_tolerant(open_mpi, {"OMPI_MCA_mpi_ft_enable": "1"})
    assert fault_tolerant(open_mpi, {"OMPI_MCA_mpi_ft_enable": "true"})
    assert not fault_tolerant(open_mpi, {})
    assert not fault_tolerant(open_mpi, {"OMPI_MCA_mpi_ft_enable": "0"})
    assert not fault_tolerant("MPICH Version: 4.3.0", {"OMPI_MCA_mpi_ft_enable": "1"})


# ----- the engine in one process: a holder reported dead by its transport -----------------
STALL = """
import threading
import time
from pathlib import Path


def stall(x, folder):
    \"\"\"2 x; the first time x = 3 this holder stalls (as if dead; the file says which
    thread) until the test releases it.\"\"\"
    if x == 3 and not (Path(folder) / "stalled").exists():  # once
        (Path(folder) / "stalled").write_text(threading.current_thread().name)
        while not (Path(folder) / "release").exists():
            time.sleep(0.01)
    return 2.0 * x
"""


def test_sweep_puts_a_lost_holders_tasks_back_in_process(tmp_path):
    """The transport's PEER_LOST (put in rank 0's inbox by hand while a holder stalls in
    a kernel) makes the sweep run that holder's tasks elsewhere, as `lost` attempts."""
    info = run_info(tmp_path, sweep_script("stall", 8, 0, f"{{folder: '{tmp_path}'}}"), 3,
                    kernels=STALL)
    hub = LocalHub(3)
    coordinator = start_rank(hub.transport(0), info)
    identity = RunIdentity("engine", info.run_id, "", "script.yml", "", dict.fromkeys(
        ("script", "kernels", "data"), ""), {"world_size": 3}, ["here"] * 3)
    results = ResultsFile.open(tmp_path / "results.h5", identity)
    Coordinator(coordinator, results, {})
    others = [start_rank(hub.transport(rank), info) for rank in (1, 2)]
    for executor in (coordinator, *others):
        preload_kernels(executor)
    threads = [threading.Thread(target=run_as_worker, args=(executor,), daemon=True,
                                name=str(executor.rank)) for executor in others]
    for thread in threads:
        thread.start()
    stalled = tmp_path / "stalled"

    def report_the_stalled_holder_dead() -> None:
        wait_for(lambda: stalled.exists() and stalled.read_text(), 30)
        rank = int(stalled.read_text())
        hub.inboxes[0].put(Message(rank, Kind.PEER_LOST, PeerLost(rank)))
    reporter = threading.Thread(target=report_the_stalled_holder_dead, daemon=True)
    reporter.start()
    state, exit_code = run_as_coordinator(coordinator)
    (tmp_path / "release").touch()  # the "dead" holder may end now
    for thread in (reporter, *threads):
        thread.join(timeout=30)
        assert not thread.is_alive()
    results.close(state, exit_code)
    assert (state, exit_code) == (RunState.FINISHED.value, ExitCode.OK)
    dead = int(stalled.read_text())
    with h5py.File(tmp_path / "results.h5") as file:
        rows, attempts = experiments(file), file["attempts"][()]
        errored = [text(row["detail"]) for row in file["milestones"][()]
                   if row["rank"] == dead and text(row["name"]) == "Errored"]
    assert set(rows["status"]) == {b"done"}
    assert rows["result"].tolist() == [2.0 * x for x in rows["x"].tolist()]
    lost = attempts[attempts["status"] == b"lost"]
    assert len(lost) >= 1 and set(lost["rank"].tolist()) == {dead}
    assert set(rows["rank"][rows["x"] == 3].tolist()) != {dead}  # re-run on the survivor
    assert errored == [f"rank {dead} on host here died"]
