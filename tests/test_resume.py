"""Resume after a kill or a signal, reset, live status, export and timeline."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, distx, done_count, mpiexec, open_mpi_launcher, run_script, text
from test_durability import kill_everything, rank_pids, unlocked, wait_for

from distx.results.reader import read_results

KEYS = ["id", "index", "seed", "scale", "fold", "status", "result"]


def table(path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["experiments"][()][KEYS]


def recorded(path) -> np.ndarray:
    """The table as recorded: the last checkpoint and the journal after it (a killed run
    may have journalled results no checkpoint holds yet)."""
    return read_results(path, lambda file: file["experiments"][()][KEYS])


def attempts(path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["attempts"][()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "reference.h5"
    result = run_script(SCRIPTS / "resumable.yml", output, 3, "--set", "x=1")
    assert result.returncode == 0, result.stderr
    return table(output)


def start(output, ranks=3, *extra):
    command = [*mpiexec(), "-n", str(ranks), sys.executable, "-m", "distx",
               str(SCRIPTS / "resumable.yml"), "-o", str(output), *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("victim", [0, 1])
def test_resume_after_sigkill_completes_without_running_anything_twice(tmp_path, victim,
                                                                      uninterrupted):
    output = tmp_path / "out.h5"
    job = start(output)
    try:
        wait_for(lambda: output.exists() and done_count(output) >= 20, 90)
        os.kill(rank_pids(str(output))[victim], signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        kill_everything(job, output)
    killed = recorded(output)
    done_before = set(killed["id"][killed["status"] == b"done"])
    assert 0 < len(done_before) < len(killed)
    resumed = run_script(SCRIPTS / "resumable.yml", output, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = table(output)
    assert (final == uninterrupted).all()
    history = attempts(output)
    second_run = set(history["id"][history["run"] == 1])
    assert not (second_run & done_before), "an experiment done before the kill ran again"
    done_rows = history[history["status"] == b"done"]
    ids, counts = np.unique(done_rows["id"], return_counts=True)
    assert counts.max() == 1 and len(ids) == len(final)
    with h5py.File(output) as file:
        runs = file["runs"][()]
        assert list(runs["run"]) == [0, 1]
        assert text(runs["state"][0]) == "Running" and text(runs["state"][1]) == "Finished"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_to_launcher_stops_gracefully_and_resume_finishes(tmp_path, signal_number,
                                                                 uninterrupted):
    output = tmp_path / "out.h5"
    job = start(output, 3, "--grace", "20")
    wait_for(lambda: output.exists() and done_count(output) >= 20, 90)
    job.send_signal(signal_number)
    _, stderr = job.communicate(timeout=90)
    if open_mpi_launcher() and signal_number != signal.SIGUSR1:
        # Open MPI's launcher ends the job itself on SIGTERM/SIGINT (it forwards only
        # SIGUSR1/2): distx cannot stop gracefully, but nothing done is lost.
        assert job.returncode != 0
        wait_for(lambda: unlocked(output), 60)
    else:
        assert job.returncode == 3, stderr
        assert "--resume continues it" in stderr
        with h5py.File(output) as file:
            assert text(file.attrs["state"]) == "Cancelled"
            rows = file["experiments"][()]
        statuses = set(rows["status"])
        assert statuses <= {b"done", b"created"}, statuses  # nothing left running
        assert b"created" in statuses
    assert run_script(SCRIPTS / "resumable.yml", output, 2, "--resume").returncode == 0
    assert (table(output) == uninterrupted).all()


def test_resume_adds_new_grid_points_and_keeps_old_rows(tmp_path, uninterrupted):
    script = tmp_path / "grid.yml"
    text_of = (SCRIPTS / "resumable.yml").read_text().replace("Kernels: ../kernels",
                                                              f"Kernels: {SCRIPTS.parent}/kernels")
    script.write_text(text_of.replace("scale: [1, 2]", "scale: [1]"))
    output = tmp_path / "out.h5"
    assert run_script(script, output, 3).returncode == 0
    first = table(output)
    script.write_text(text_of.replace("scale: [1, 2]", "scale: [1, 2.5]"))
    result = run_script(script, output, 3, "--resume")
    assert result.returncode == 0, result.stderr
    assert "(300 already done)" in distx("export", output, "--csv", "-", "--table",
                                         "logs").stdout
    grown = table(output)
    assert len(grown) == 600 and (grown[:300]["id"] == first["id"]).all()
    assert (grown[:300]["result"] == first["result"]).all()
    added = grown[300:]
    assert (added["scale"] == 2.5).all() and (added["status"] == b"done").all()
    assert np.allclose(added["result"], added["seed"] * 2.5 + added["fold"] / 10)


def test_resume_refuses_changed_kernel_or_data_unless_forced(tmp_path):
    folder = tmp_path / "project"
    shutil.copytree(SCRIPTS.parent / "kernels", folder / "kernels")
    script = folder / "job.yml"
    script.write_text((SCRIPTS / "sweep_arrays.yml").read_text()
                      .replace("Kernels: ../kernels", "Kernels: kernels"))
    output = tmp_path / "out.h5"
    assert run_script(script, output, 1).returncode == 0
    with (folder / "kernels" / "probe.py").open("a") as kernel:
        kernel.write("\n# changed\n")
    refused = run_script(script, output, 1, "--resume")
    assert refused.returncode == 2
    assert "the kernels changed since it was written" in refused.stderr
    assert "--force" in refused.stderr
    script.write_text(script.read_text().replace("Seed: 2", "Seed: 3"))
    refused = run_script(script, output, 1, "--resume")
    assert "the kernels and the data changed" in refused.stderr
    forced = run_script(script, output, 1, "--resume", "--force")
    assert forced.returncode == 0, forced.stderr


def test_resume_refuses_a_changed_module_that_the_kernel_imports(tmp_path):
    folder = tmp_path / "project"
    (folder / "kernels").mkdir(parents=True)
    (folder / "kernels" / "scaled.py").write_text(
        "from factors import FACTOR\n\n\ndef times(seed):\n    return seed * FACTOR\n")
    (folder / "kernels" / "factors.py").write_text("FACTOR = 2\n")
    (folder / "kernels" / "unrelated.py").write_text("X = 1\n")
    script = folder / "job.yml"
    script.write_text("Version: 2\nName: imports\nExperiments:\n  Keyfields:\n"
                      "    seed: {stop: 5}\nSequence:\n  - Task: Run.Sweep\n"
                      "    Config: {Kernel: scaled.times}\n")
    output = tmp_path / "out.h5"
    assert run_script(script, output, 1).returncode == 0
    (folder / "kernels" / "unrelated.py").write_text("X = 2\n")  # not used: not shipped
    assert run_script(script, output, 1, "--resume").returncode == 0
    (folder / "kernels" / "factors.py").write_text("FACTOR = 3\n")
    refused = run_script(script, output, 1, "--resume")
    assert refused.returncode == 2
    assert "the kernels changed since it was written" in refused.stderr


def test_resume_of_a_missing_file_starts_it(tmp_path):
    output = tmp_path / "new.h5"
    assert run_script(SCRIPTS / "sweep_arrays.yml", output, 1, "--resume").returncode == 0
    assert table_status(output) == {b"done"}


def table_status(path) -> set:
    with h5py.File(path) as file:
        return set(file["experiments"][()]["status"])


def test_reset_sets_error_and_running_back_to_created_keeping_history(tmp_path):
    output = tmp_path / "out.h5"
    run_script(SCRIPTS / "flaky.yml", output, 2, "--set", f"marker={tmp_path}")
    before = attempts(output)
    result = distx("reset", output, "--status", "error,running")
    assert result.returncode == 0 and "2 experiment(s) set back to created (2 error)" in \
        result.stdout
    with h5py.File(output) as file:
        rows = file["experiments"][()]
    assert sorted(rows["seed"][rows["status"] == b"created"]) == [3, 3]
    assert set(rows["attempts"][rows["seed"] == 3]) == {3}
    assert len(attempts(output)) == len(before)
    assert distx("reset", output, "--status", "oops").returncode == 2
    rerun = run_script(SCRIPTS / "flaky.yml", output, 2, "--resume", "--set",
                       f"marker={tmp_path}")
    assert rerun.returncode == 1
    with h5py.File(output) as file:
        rows = file["experiments"][()]
    assert set(rows["attempts"][rows["seed"] == 3]) == {6}  # history continues


def test_status_reads_a_file_while_a_run_writes_it(tmp_path):
    output = tmp_path / "out.h5"
    job = start(output)
    seen = []
    try:
        wait_for(output.exists, 60)
        while job.poll() is None and len(seen) < 5:
            shown = distx("status", output)
            assert shown.returncode == 0, shown.stderr
            seen.append(shown.stdout)
            time.sleep(0.3)
    finally:
        job.terminate()
        job.wait(timeout=60)
    assert any("Running" in text_ and "running" in text_ for text_ in seen)


def test_export_writes_csv_of_every_table(tmp_path):
    output = tmp_path / "out.h5"
    assert run_script(SCRIPTS / "flaky.yml", output, 2, "--set",
                      f"marker={tmp_path}").returncode == 1
    for name in ("experiments", "attempts", "milestones", "values", "tasks", "logs", "runs"):
        destination = tmp_path / f"{name}.csv"
        result = distx("export", output, "--csv", destination, "--table", name)
        assert result.returncode == 0, result.stderr
        with destination.open() as source:
            reader = csv.DictReader(source)
            rows = list(reader)
        assert reader.fieldnames[0] == "run" or name in ("experiments", "runs")
        assert rows or name == "values", name  # this script publishes no values
    with (tmp_path / "experiments.csv").open() as source:
        experiments = list(csv.DictReader(source))
    assert {row["status"] for row in experiments} == {"done", "error"}
    assert any("ValueError: bad seed 3" in row["error"] for row in experiments)
    assert distx("export", output, "--csv", "-", "--table", "nope").returncode == 2


def test_timeline_draws_a_png(tmp_path):
    output = tmp_path / "out.h5"
    assert run_script(SCRIPTS / "sweep_arrays.yml", output, 3).returncode == 0
    picture = tmp_path / "timeline.png"
    result = distx("timeline", output, "-o", picture)
    assert result.returncode == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000
