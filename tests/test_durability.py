"""A run killed at any moment leaves a results file that opens and keeps what finished."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, distx, done_count, mpiexec, text


def rank_pids(marker: str) -> dict[int, int]:
    """PMI rank -> pid of the processes whose command line contains `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in command and "distx" in command:
            for variable in environment:  # MPICH and Open MPI name the rank differently
                if variable.startswith((b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK=")):
                    found[int(variable.split(b"=")[1])] = int(entry.name)
    return found


def kill_everything(job: subprocess.Popen, output: Path) -> None:
    """The launcher and every rank still writing `output`."""
    job.kill()
    for pid in rank_pids(str(output)).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the run to start"
        time.sleep(0.05)


@pytest.mark.parametrize("victim, delay", [(0, 0.0), (0, 0.7), (0, 1.5), (1, 0.7)])
def test_sigkill_of_a_rank_leaves_a_readable_file(tmp_path, victim, delay):
    output = tmp_path / "out.h5"
    command = [*mpiexec(), "-n", "3", sys.executable, "-m", "distx",
               str(SCRIPTS / "slow_sweep.yml"), "-o", str(output)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(output.exists, 60)
        time.sleep(delay)
        os.kill(rank_pids(str(output))[victim], signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        kill_everything(job, output)
    assert job.returncode != 0
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Running"  # it never got to write its end
        if "experiments" in file:
            rows = file["experiments"][()]
            done = rows[rows["status"] == b"done"]
            assert (done["result"] == done["seed"] ** 2).all()
    shown = distx("show", output)
    assert shown.returncode == 0 and "state Running" in shown.stdout


def unlocked(path) -> bool:
    try:
        h5py.File(path, "r").close()
        return True
    except BlockingIOError:
        return False


def finished_table(output) -> np.ndarray:
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Finished"
        return file["experiments"][()][["id", "seed", "status", "result"]]


@pytest.fixture(scope="module")
def crash_reference(tmp_path_factory):
    output = tmp_path_factory.mktemp("crash") / "reference.h5"
    result = distx(SCRIPTS / "crash_points.yml", "-o", output, ranks=3)
    assert result.returncode == 0, result.stderr
    return finished_table(output)


@pytest.mark.parametrize("point", ["distribution", "sweep", "gather", "launcher"])
def test_kill_at_each_point_then_resume_matches_an_uninterrupted_run(tmp_path, point,
                                                                     crash_reference):
    output = tmp_path / "out.h5"
    command = [*mpiexec(), "-n", "3", sys.executable, "-m", "distx",
               str(SCRIPTS / "crash_points.yml"), "-o", str(output), "--set",
               f"kill_at={point}"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    try:
        if point == "distribution":
            wait_for(output.exists, 60)   # created right before the data goes out
            os.kill(rank_pids(str(output))[0], signal.SIGKILL)
        elif point == "launcher":
            wait_for(lambda: output.exists() and done_count(output) > 5, 60)
            job.kill()
        _, stderr = job.communicate(timeout=120)
        assert job.returncode != 0, stderr
        wait_for(lambda: unlocked(output), 60)  # a dying rank closes its files last
    finally:
        kill_everything(job, output)
    with h5py.File(output, "r") as file:       # opens, without h5clear or special flags
        assert text(file.attrs["state"]) == "Running"
        if point == "gather":
            rows = file["experiments"][()]
            assert set(rows["status"]) == {b"done"}  # the sweep was complete before the kill
    assert distx("show", output).returncode == 0
    resumed = distx(SCRIPTS / "crash_points.yml", "-o", output, "--resume", ranks=3)
    assert resumed.returncode == 0, resumed.stderr
    assert (finished_table(output) == crash_reference).all()
    with h5py.File(output, "r") as file:
        everything = file[text(file["values"][()][-1]["value"])][()]
    assert everything.shape == (30_000_000,)
