"""Runtime faults on the worker side: odd results that must fail one task, not the run,
and --grace as a hard bound on a stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import h5py
import pytest
from conftest import (
    SCRIPTS,
    done_count,
    milestones,
    mpiexec,
    open_mpi_launcher,
    run_script,
    text,
)
from test_durability import kill_everything, wait_for

from distx.results.reader import error_texts, read_results


def test_kernel_returning_an_int_too_large_for_float64_fails_only_its_task(tmp_path):
    """10**400 from a kernel on a worker used to abort the job, leaving the file Running."""
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "huge_result.yml", output, 3, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Errored"
        rows = file["experiments"][()]
        tasks = file["tasks"][()]
    failed = rows[rows["status"] == b"error"]
    assert list(failed["seed"]) == [7]
    assert "integer too large for a 64-bit number" in \
        read_results(output, error_texts)[failed["id"][0]]
    done = rows[rows["status"] == b"done"]
    assert len(done) == 29 and (done["result"] == done["seed"]).all()
    errors = {int(row["rank"]): text(row["error"]) for row in tasks if row["status"] == b"error"}
    assert list(errors) == [1] and "integer too large for a 64-bit number" in errors[1]


def start_run(script, output, ranks, *extra) -> subprocess.Popen:
    command = [sys.executable, "-m", "distx", str(script), "-o", str(output), *extra]
    if ranks is not None:
        command = [*mpiexec(), "-n", str(ranks), *command]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def stop_when(job: subprocess.Popen, output, ready) -> tuple[float, str]:
    """Once `ready()` has run, stop the run as a signal would and check that --grace (3 s)
    bounded the stop: exit code 3 within 30 s. Returns (seconds, stderr)."""
    try:
        ready()
    except BaseException:
        kill_everything(job, output)
        raise
    seconds, stderr = stop_and_time(job, output)
    assert job.returncode == 3, stderr
    assert seconds < 30, f"the stop took {seconds:.0f} s"
    return seconds, stderr


def stop_and_time(job: subprocess.Popen, output) -> tuple[float, str]:
    """SIGTERM to the launcher (or the single process); seconds until it exited."""
    signalled = time.monotonic()
    job.send_signal(signal.SIGTERM)
    try:
        _, stderr = job.communicate(timeout=50)
    finally:
        kill_everything(job, output)
    return time.monotonic() - signalled, stderr


@pytest.mark.parametrize("ranks", [None, 3])
def test_grace_bounds_a_stop_during_minute_long_sweep_kernels(tmp_path, ranks):
    """Kernels of 60 s, --grace 3: the run ends long before them, with exit code 3, the
    quick experiments that came back done and the others back to `created` (before: it
    waited for every kernel in flight, and for the next ones, and threw their results
    away). With one process rank 0 is in the kernel itself: its timer thread ends it."""
    if ranks is not None and open_mpi_launcher():
        pytest.skip("Open MPI's launcher ends the job itself on SIGTERM")
    output = tmp_path / "out.h5"
    job = start_run(SCRIPTS / "long_sweep.yml", output, ranks, "--grace", "3")

    def ready() -> None:
        if ranks is None:  # rank 0 runs the kernels itself: nothing is flushed meanwhile
            wait_for(output.exists, 90)
            time.sleep(6)
        else:
            wait_for(lambda: output.exists() and done_count(output) >= 1, 90)
            time.sleep(2)  # the holders are in their minute-long kernels now
    _, stderr = stop_when(job, output, ready)
    assert "--resume continues it" in stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Cancelled"
        rows = file["experiments"][()]
    done = rows[rows["status"] == b"done"]
    assert set(done["seed"]) <= {0, 1, 2, 3} and (done["result"] == done["seed"]).all()
    assert len(done) or ranks is None
    assert set(rows["status"][rows["status"] != b"done"]) == {b"created"}


@pytest.mark.parametrize("ranks", [None, 3])
def test_grace_bounds_a_stop_while_workers_are_in_a_kernel(tmp_path, ranks):
    """Workers in a 60 s Run.Kernel: the coordinator records them as Cancelled when the
    grace period ends and aborts the job (before: the run went on for the whole minute).
    With one process the workers are threads that cannot be joined: the process exits."""
    if ranks is not None and open_mpi_launcher():
        pytest.skip("Open MPI's launcher ends the job itself on SIGTERM")
    output = tmp_path / "out.h5"
    job = start_run(SCRIPTS / "slow_kernel.yml", output, ranks, "--grace", "3")

    def ready() -> None:
        wait_for(lambda: output.exists(), 90)
        time.sleep(3)  # every rank has started its sequence
    _, stderr = stop_when(job, output, ready)
    assert "still in a kernel or command 3 s (--grace) after the stop" in stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Cancelled"
        reached = milestones(file)
    assert len(reached) == (ranks or 2)
    assert all(names[-1] == "Cancelled" for names in reached.values()), reached
