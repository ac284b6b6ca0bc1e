"""The results store under faults, as users meet them: real `distx` runs under mpiexec.

Two writers, concurrent starts, --overwrite of what is not a results file, outputs that
cannot hold a file, a full disk, odd records from the ranks, version-1 files, and (slow)
a small kill campaign (tests/campaigns/kill_campaign.py runs the full count).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TESTS, distx, mpiexec, run_script, text
from test_durability import kill_everything, wait_for

from distx.results.reader import experiment_arrays, read_results

KERNELS = TESTS / "kernels"
V1 = TESTS / "data" / "v1"


def sweep_script(folder: Path, count: int, name: str = "sweep", pause: float = 0.0) -> Path:
    path = folder / f"{name}.yml"
    path.write_text(f"""\
Version: 2
Name: {name}
Kernels: {KERNELS}
Experiments:
  Keyfields:
    seed: {{stop: {count}}}
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: probe.slow_square, Args: {{pause: {pause}}}}}
""")
    return path


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A small file system mounted at `folder` for the test, always unmounted."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("distx: error")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ----- one writer per file (issue 10, case 4) --------------------------------------------------
def test_a_second_run_resume_or_reset_on_a_live_file_is_refused_naming_the_run(tmp_path):
    script = sweep_script(tmp_path, 400, pause=0.1)  # 20 s on 2 holders
    output = tmp_path / "out.h5"
    first = subprocess.Popen([*mpiexec(), "-n", "3", sys.executable, "-m", "distx",
                              str(script), "-o", str(output)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(output.exists, 60)
        with h5py.File(output, "r") as file:           # plain h5py opens it during the run
            run_id = text(file.attrs["run_id"])
        for extra in ([], ["--overwrite"], ["--resume"]):
            second = run_script(script, output, 1, *extra)
            assert second.returncode == 2, second.stderr
            assert f"being written by run {run_id}" in one_error_line(second.stderr)
        reset = distx("reset", output, "--status", "done")
        assert reset.returncode == 2 and run_id in reset.stderr
        _, stderr = first.communicate(timeout=180)
    finally:
        kill_everything(first, output)
    assert first.returncode == 0, stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["run_id"]) == run_id
        assert set(file["experiments"]["status"]) == {b"done"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.h5", "sweep.yml"]


def test_fifteen_simultaneous_starts_never_crash(tmp_path):
    script = sweep_script(tmp_path, 20)
    output = tmp_path / "out.h5"
    command = [sys.executable, "-m", "distx", str(script), "-o", str(output), "--overwrite"]
    jobs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(15)]
    outcomes = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    for code, stderr in outcomes:
        assert code in (0, 2) and "Traceback" not in stderr, stderr
        if code == 2:
            assert "being written by run" in stderr, stderr
    assert any(code == 0 for code, _ in outcomes)
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Finished"
        assert set(file["experiments"]["status"]) == {b"done"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.h5", "sweep.yml"]


# ----- what --overwrite may replace, where a file may go (case 5) ----------------------------
@pytest.mark.parametrize("kind", ["the script", "a text file", "a device node", "a folder"])
def test_overwrite_refuses_what_is_not_a_results_file_and_leaves_it(tmp_path, kind):
    script = sweep_script(tmp_path, 3)
    target = {"the script": script, "a text file": tmp_path / "notes.txt",
              "a device node": tmp_path / "null", "a folder": tmp_path / "folder"}[kind]
    if kind == "a text file":
        target.write_text("keep me\n")
    elif kind == "a device node":
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "a folder":
        target.mkdir()
    before = target.read_bytes() if target.is_file() else None
    result = run_script(script, target, None, "--overwrite")
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr)
    if before is not None:
        assert target.read_bytes() == before
    elif kind == "a device node":
        assert stat.S_ISCHR(target.stat().st_mode)
    else:
        assert list(target.iterdir()) == []
    assert not Path(str(target) + ".lock").exists()


def test_an_output_under_a_file_or_in_a_read_only_folder_is_refused_before_writing(tmp_path):
    script = sweep_script(tmp_path, 3)
    (tmp_path / "plain").write_text("x")
    result = run_script(script, tmp_path / "plain" / "out.h5", None)
    assert result.returncode == 2 and "is a file" in one_error_line(result.stderr)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        result = run_script(script, folder / "out.h5", None)
        assert result.returncode == 2 and "not writable" in one_error_line(result.stderr)
        assert list(folder.iterdir()) == []


def contents(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as file:
        return {name: file[name][()] for name in ("experiments", "attempts", "tasks",
                                                  "milestones", "runs")}


# ----- no space left (case 3) -------------------------------------------------------------------
def test_a_full_disk_stops_the_run_with_one_line_and_exit_1(tmp_path):
    script = sweep_script(tmp_path, 60_000)
    with tmpfs(tmp_path / "small", "size=2m") as folder:
        result = run_script(script, folder / "out.h5", 3, timeout=300)
        assert result.returncode == 1, result.stderr
        assert "cannot write the results file" in one_error_line(result.stderr)
        assert [path.name for path in folder.iterdir() if path.name.startswith(".")] == []


def test_a_resume_on_a_full_disk_leaves_the_finished_file_intact(tmp_path):
    with tmpfs(tmp_path / "small", "size=2m") as folder:
        output = folder / "out.h5"
        small = sweep_script(tmp_path, 1000, name="grow")
        assert run_script(small, output, 3).returncode == 0
        before = contents(output)
        bigger = sweep_script(tmp_path / "..", 60_000, name="grow")
        bigger = bigger.rename(tmp_path / "bigger.yml")
        result = run_script(bigger, output, 3, "--resume", timeout=300)
        assert result.returncode == 1, result.stderr
        one_error_line(result.stderr)
        after = contents(output)
        for name in ("experiments", "attempts", "tasks", "milestones"):
            assert np.array_equal(after[name], before[name])   # nothing lost or shrunk
        assert after["runs"][0] == before["runs"][0]
        again = distx("status", output)
        assert again.returncode == 0 and "1000 done" in again.stdout


# ----- any record from any rank (issue 11's finding) -------------------------------------------
def test_nul_bytes_and_odd_keys_from_a_worker_never_fail_the_sweep(tmp_path):
    script = tmp_path / "odd.yml"
    script.write_text(f"""\
Version: 2
Name: odd
Kernels: {KERNELS}
Experiments:
  Keyfields:
    seed: {{stop: 400}}
Roles:
  coordinator:
    Sequence:
      - Task: Run.Sweep
        Config: {{Kernel: probe.slow_square, Args: {{pause: 0}}}}
  workers:
    Sequence:
      - Task: Run.CliExecute
        Config: {{Parameters: "printf 'a\\\\000b\\\\377\\\\n'"}}
      - Task: Run.PublishFromPreviousTaskLog
        Config: {{Pattern: "^(a.*)$", Keys: [odd]}}
""")
    output = tmp_path / "out.h5"
    result = run_script(script, output, 3)
    assert result.returncode == 0, result.stderr
    with h5py.File(output, "r") as file:
        assert set(file["experiments"]["status"]) == {b"done"}
        assert any(b"\\x00" in row["message"].encode() if isinstance(row["message"], str)
                   else b"\\x00" in row["message"] for row in file["logs"][()])


# ----- version-1 files --------------------------------------------------------------------------
def test_version_1_files_still_show_export_and_resume(tmp_path):
    for command in (["show"], ["status"], ["export", "--table", "experiments", "--csv",
                                            str(tmp_path / "x.csv")]):
        result = distx(command[0], V1 / "sweep.h5", *command[1:])
        assert result.returncode == 0, result.stderr
    copy = tmp_path / "sweep.h5"
    copy.write_bytes((V1 / "sweep.h5").read_bytes())
    # --force: the fingerprint of tests/kernels changes whenever a test kernel is added
    resumed = run_script(V1 / "sweep12.yml", copy, None, "--resume", "--force")
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(copy, "r") as file:
        assert file.attrs["format_version"] == 3
        rows = file["experiments"][()]
        assert len(rows) == 12 and set(rows["status"]) == {b"done"}
        assert (rows["result"] == rows["seed"] ** 2).all()
        assert list(file["runs"]["run"]) == [0, 1]


def test_a_newer_format_version_is_refused_naming_it(tmp_path):
    copy = tmp_path / "sweep.h5"
    copy.write_bytes((V1 / "sweep.h5").read_bytes())
    with h5py.File(copy, "r+") as file:
        file.attrs["format_version"] = 9
    result = distx("show", copy)
    assert result.returncode == 2 and "format version 9" in one_error_line(result.stderr)


# ----- kills (issue 10, cases 1 and 2; the full count: tests/campaigns/kill_campaign.py) -------
@pytest.mark.slow
def test_random_kills_of_a_large_sweep_a_rebuild_and_a_reset_all_recover(tmp_path):
    sys.path.insert(0, str(TESTS / "campaigns"))
    from kill_campaign import run_campaign

    figures = run_campaign(tmp_path, rows=100_000, kills=3, rebuilds=2, resets=2, seed=7)
    print(figures.report())
    assert not figures.failures
    assert figures.recovered == figures.kills + figures.rebuild_kills + figures.reset_kills


def test_a_killed_array_sweep_loses_no_recorded_array_and_resumes(tmp_path):
    script = tmp_path / "arrays.yml"
    script.write_text(f"""\
Version: 2
Name: arrays
Kernels: {KERNELS}
Experiments:
  Keyfields:
    seed: {{stop: 1000}}   # about 5 s on 2 workers: the kill lands mid-sweep
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: probe.slow_ramp, Args: {{pause: 0.01}}}}
""")
    output = tmp_path / "out.h5"
    command = [*mpiexec(), "-n", "3", sys.executable, "-m", "distx", str(script), "-o",
               str(output)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = output.with_name(output.name + ".journal")
    try:
        wait_for(lambda: journal.exists() and journal.stat().st_size > 20_000, 120)
        kill_everything(job, output)            # SIGKILL mid-sweep: no close, no checkpoint
        job.wait(timeout=60)
    finally:
        kill_everything(job, output)

    def recorded() -> list[tuple[int, list[float]]]:
        def read(file):
            rows, arrays = file["experiments"][()], experiment_arrays(file)["result"]
            return [(int(row["seed"]), array.tolist()) for row, array in zip(rows, arrays)
                    if row["status"] == b"done"]
        return read_results(output, read)

    before = recorded()                          # the last checkpoint plus the journal
    assert 0 < len(before) < 1000                # killed mid-sweep
    assert all(array == [seed + n for n in range(seed % 3 + 1)] for seed, array in before)
    assert distx("recover", output).returncode == 0
    assert recorded() == before                  # everything recorded survived the kill
    resumed = run_script(script, output, 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = dict(recorded())
    assert len(after) == 1000 and all(after[seed] == array for seed, array in before)
