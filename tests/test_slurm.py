"""The sbatch files of jobs/ submitted to a real one-node Slurm cluster with sbatch --wait."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, done_count, run_script, text
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
    # Ended: the second start has written its last line and squeue no longer lists the job
    # (squeue alone also prints nothing when it fails for a moment during the requeue).
    _until(lambda: "finished (exit code" in log.read_text().partition("restart 1 of job")[2]
           and cluster.job_state(job) == "", 300)
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


def test_sweep_array_job_runs_shards_and_merges_them(cluster, tmp_path):
    """jobs/sweep-array.sbatch: four array tasks of two ranks each, then the merge job; the
    merged table is the table of one unsharded run, every experiment done exactly once."""
    script, merged = SCRIPTS / "resumable.yml", tmp_path / "sweep.h5"
    submitted = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}",
                            f"--output={tmp_path}/array-%a.log",
                            str(ROOT / "jobs" / "sweep-array.sbatch"), str(script),
                            str(merged), "--set", "pause=0")
    array = submitted.stdout.strip().split(";")[0]
    _until(lambda: cluster.run("squeue", "-h", check=False).stdout.strip() == "", 300)
    logs = "".join(path.read_text() for path in sorted(tmp_path.glob("*.log")))
    assert merged.exists(), logs
    assert f"of job {array} runs shard 3/4" in logs
    assert "sweep.h5: 600 experiment(s), 600 done, from 4 run(s) of 4 file(s)" in logs
    reference = tmp_path / "single.h5"
    assert run_script(script, reference, None, "--set", "pause=0").returncode == 0
    columns = ["id", "seed", "scale", "fold", "status", "result"]
    with h5py.File(merged, "r") as file, h5py.File(reference, "r") as single:
        rows = np.sort(file["experiments"][()][columns], order="id")
        assert (rows == np.sort(single["experiments"][()][columns], order="id")).all()
        assert [text(shard) for shard in file["sources"][()]["shard"]] == [
            "0/4", "1/4", "2/4", "3/4"]
        assert set(file["attempts"][()]["rank"]) == {1}    # each shard: 2 ranks
        done = file["attempts"][()]
    ids, counts = np.unique(done[done["status"] == b"done"]["id"], return_counts=True)
    assert len(ids) == 600 and counts.max() == 1
