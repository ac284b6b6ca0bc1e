"""The sbatch files of jobs/ submitted to a real one-node Slurm cluster with sbatch --wait."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, done_count, text
from slurm_cluster import Cluster, why_not_available

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(why_not_available() is not None,
                                reason=str(why_not_available()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"), Path(sys.executable).parent)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("job", ["pi-srun", "pi-mpiexec"])
def test_pi_job_runs_under_slurm(cluster, tmp_path, job):
    output, log = tmp_path / "pi.h5", tmp_path / "job.log"
    result = cluster.run("sbatch", "--wait", f"--chdir={ROOT}", f"--output={log}",
                         str(ROOT / "jobs" / f"{job}.sbatch"), str(output), check=False)
    assert result.returncode == 0, result.stderr + log.read_text()
    assert "pi finished (exit code 0)" in log.read_text()
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Finished"
        assert int(file.attrs["world_size"]) == 4
        rows = file["experiments"][()]
    assert len(rows) == 32 and set(rows["status"]) == {b"done"}
    assert set(rows["rank"]) == {1, 2, 3}


def test_requeue_job_stops_on_sigusr1_requeues_and_resumes(cluster, tmp_path):
    output, log = tmp_path / "sweep.h5", tmp_path / "job.log"
    submitted = cluster.run("sbatch", "--parsable", f"--chdir={ROOT}", f"--output={log}",
                            str(ROOT / "jobs" / "requeue.sbatch"),
                            str(SCRIPTS / "resumable.yml"), str(output), "--set", "pause=0.05")
    job = submitted.stdout.strip().split(";")[0]
    _until(lambda: output.exists() and done_count(output) >= 50, 120)
    cluster.run("scancel", "--signal=USR1", job)   # what --signal=USR1@120 sends
    _until(lambda: "restart" in log.read_text() and cluster.job_state(job) == "PENDING", 120)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")  # skip the requeue hold
    _until(lambda: cluster.job_state(job) == "", 300)
    history = log.read_text()
    assert "requeueing job" in history and "restart 1 of job" in history
    with h5py.File(output, "r") as file:
        runs = file["runs"][()]
        rows = file["experiments"][()]
        attempts = file["attempts"][()]
    assert [text(state) for state in runs["state"]] == ["Cancelled", "Finished"]
    assert list(runs["exit_code"]) == [3, 0]
    assert len(rows) == 600 and set(rows["status"]) == {b"done"}
    assert np.allclose(rows["result"], rows["seed"] * rows["scale"] + rows["fold"] / 10)
    done = attempts[attempts["status"] == b"done"]
    assert len(np.unique(done["id"])) == len(done) == 600  # nothing ran twice


def _until(condition, seconds: float) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the Slurm job"
        time.sleep(1)
