"""Many jobs, one table: --shard slices, distx merge, and the Slurm array's shard numbers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, distx, done_count, mpiexec, run_script, text
from hypothesis import given
from hypothesis import strategies as st
from test_durability import kill_everything, rank_pids, wait_for

from distx.cli import main
from distx.errors import UserError
from distx.results import checkpoint
from distx.results.claim import Claim
from distx.results.export import export_csv
from distx.results.merge import merge
from distx.results.reader import experiment_arrays
from distx.script.model import load_script
from distx.script.shard import Shard, parse_shard, slurm_shard


@given(size=st.integers(0, 5000), count=st.integers(1, 300))
def test_shards_partition_every_grid(size, count):
    slices = [Shard(index, count).indices(size) for index in range(count)]
    joined = np.concatenate(slices)
    assert (joined == np.arange(size)).all()     # each experiment once, in grid order
    lengths = [len(part) for part in slices]
    assert max(lengths) - min(lengths) <= 1      # balanced within one experiment


def test_shard_text():
    assert parse_shard("2/8", {}) == Shard(2, 8)
    assert parse_shard(" 0 / 1 ", {}) == Shard(0, 1)
    for bad in ("2", "2/", "a/b", "-1/4", "4/4", "0/0", "1/2/3"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad, {})


def array_task(task: int, low: int, high: int, **extra: str) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(high), **extra}


def test_shard_auto_from_slurm_array_variables():
    assert parse_shard("auto", array_task(3, 0, 3)) == Shard(3, 4)
    assert slurm_shard(array_task(7, 5, 8, SLURM_ARRAY_TASK_COUNT="4")) == Shard(2, 4)
    assert slurm_shard(array_task(8, 0, 12, SLURM_ARRAY_TASK_STEP="4")) == Shard(2, 4)
    with pytest.raises(UserError, match="inside a Slurm job array only"):
        slurm_shard({})
    with pytest.raises(UserError, match="has no shard order"):   # --array=1,5,9
        slurm_shard(array_task(5, 1, 9, SLURM_ARRAY_TASK_COUNT="3"))


# ----- runs of real shards -------------------------------------------------------------------
SCRIPT = SCRIPTS / "resumable.yml"        # 600 experiments
COLUMNS = ["id", "seed", "scale", "fold", "status", "result"]


def table(path: Path, columns: list[str] = COLUMNS) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return np.sort(file["experiments"][()][columns], order="id")


def shard_files(folder: Path, count: int = 3) -> list[Path]:
    return [folder / f"resumable.shard-{index}-of-{count}.h5" for index in range(count)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three shards of resumable.yml under their default names, and one unsharded run."""
    folder = tmp_path_factory.mktemp("shards")
    result = distx(SCRIPT, "--shard", "0/3", "--set", "pause=0", cwd=folder)
    assert result.returncode == 0, result.stderr       # under its default name
    for index in (1, 2):
        assert main(["run", str(SCRIPT), "--shard", f"{index}/3", "--set", "pause=0", "-o",
                     str(shard_files(folder)[index])]) == 0
    assert main(["run", str(SCRIPT), "--set", "pause=0", "-o", str(folder / "single.h5")]) == 0
    return folder


def test_merged_shards_equal_one_unsharded_run(shards, tmp_path):
    files = shard_files(shards)
    for index, path in enumerate(files):
        with h5py.File(path, "r") as file:
            assert (file.attrs["shard_index"], file.attrs["shard_count"]) == (index, 3)
            assert len(file["experiments"]) == 200
    merged = tmp_path / "merged.h5"
    result = distx("merge", *files, "-o", merged)
    assert result.returncode == 0, result.stderr
    assert "600 experiment(s), 600 done, from 3 run(s) of 3 file(s)" in result.stdout
    assert (table(merged) == table(shards / "single.h5")).all()
    with h5py.File(merged, "r") as file:
        sources = file["sources"][()]
        assert [text(row["shard"]) for row in sources] == ["0/3", "1/3", "2/3"]
        assert [text(row["file"]) for row in sources] == list(map(str, files))
        attempts = file["attempts"][()]
        assert sorted(np.unique(attempts["run"])) == [0, 1, 2]
        assert "shard_count" not in file.attrs
    ids, counts = np.unique(attempts["id"], return_counts=True)
    assert len(ids) == 600 and counts.max() == 1      # every experiment done exactly once
    assert export_csv(merged, "sources", str(tmp_path / "sources.csv")) == 3


def whole(path: Path) -> dict[str, list]:
    """Every table of a results file (the experiments without their positions)."""
    with h5py.File(path, "r") as file:
        tables = {name: file[name][()].tolist() for name in
                  ("runs", "attempts", "milestones", "tasks", "logs", "values", "sources")}
    tables["experiments"] = table(path, ["id", "seed", "scale", "fold", "status", "attempts",
                                         "rank", "start", "end", "result"]).tolist()
    return tables


def test_merge_is_idempotent_and_never_changes_its_inputs(shards, tmp_path):
    files = shard_files(shards)
    before = {path: path.read_bytes() for path in files}
    first, again = tmp_path / "first.h5", tmp_path / "again.h5"
    merge(files, first)
    report = merge([first, files[1]], again)
    assert report.conflicts == [] and report.runs == 3
    assert whole(again) == whole(first)
    assert {path: path.read_bytes() for path in files} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["again.h5", "first.h5"]


def test_two_done_rows_of_one_id_are_a_reported_conflict(shards, tmp_path, capsys):
    rerun = tmp_path / "rerun.h5"
    assert main(["run", str(SCRIPT), "--shard", "0/3", "--set", "pause=0", "-o",
                 str(rerun)]) == 0
    capsys.readouterr()
    kept, merged = shard_files(shards)[0], tmp_path / "merged.h5"
    assert main(["merge", str(kept), str(rerun), "-o", str(merged)]) == 0
    warning = capsys.readouterr().err
    assert warning.startswith("distx: warning: 200 experiment(s) are done in more than one "
                              "file with different results (first: id ")
    assert f"in {kept} and {rerun}); kept the row of the file given first" in warning
    columns = ["id", "start", "end", "result"]
    assert (table(merged, columns) == table(kept, columns)).all()
    with h5py.File(merged, "r") as file:
        conflicts = file["conflicts"][()]
    assert {text(name) for name in conflicts["file"]} == {str(rerun)}
    assert (np.sort(conflicts[columns], order="id") == table(rerun, columns)).all()


def test_resume_of_a_shard_file_continues_that_shard_only(shards, tmp_path, capsys):
    copy = tmp_path / "copy.h5"
    shutil.copyfile(shard_files(shards)[1], copy)
    assert main(["run", str(SCRIPT), "-o", str(copy), "--resume", "--shard", "2/3"]) == 2
    assert "cannot resume with --shard 2/3: the file holds shard 1/3" in capsys.readouterr().err
    assert main(["run", str(SCRIPT), "-o", str(copy), "--resume", "--set", "pause=0"]) == 0
    with h5py.File(copy, "r") as file:
        assert len(file["experiments"]) == 200 and file.attrs["shard_index"] == 1
        assert len(file["runs"]) == 2


def test_a_killed_merge_leaves_no_file(shards, tmp_path, monkeypatch):
    output = tmp_path / "merged.h5"

    def killed(*_):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "_fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        merge(shard_files(shards), output)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    left_by_sigkill = tmp_path / ".merged.h5.123-abcd.tmp"   # SIGKILL leaves its temporary
    left_by_sigkill.write_bytes(b"half")
    merge(shard_files(shards), output)
    assert list(tmp_path.iterdir()) == [output]


def test_killed_shard_is_merged_and_the_merge_resumes_the_rest(tmp_path):
    """SIGKILL one shard mid-run; merge it with the other; resume the merged file."""
    script = SCRIPTS / "slow_sweep.yml"          # 400 experiments
    killed, other, merged = tmp_path / "killed.h5", tmp_path / "other.h5", tmp_path / "all.h5"
    job = subprocess.Popen([*mpiexec(), "-n", "2", sys.executable, "-m", "distx", str(script),
                            "--shard", "0/2", "-o", str(killed)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: killed.exists() and done_count(killed) >= 20, 90)
        os.kill(rank_pids(str(killed))[0], signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        kill_everything(job, killed)
    assert run_script(script, other, None, "--shard", "1/2").returncode == 0
    left = {path: path.read_bytes() for path in tmp_path.iterdir()}
    report = merge([killed, other], merged)
    assert {path: path.read_bytes() for path in left} == left     # inputs untouched
    done_when_killed = report.done - 200
    assert 0 < done_when_killed < 200 and report.experiments <= 400
    resumed = run_script(script, merged, None, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(merged, "r") as file:
        rows, attempts = file["experiments"][()], file["attempts"][()]
    assert len(rows) == 400 and (rows["status"] == b"done").all()
    assert (rows["result"] == rows["seed"].astype(float) ** 2).all()
    done = attempts[attempts["status"] == b"done"]
    ids, counts = np.unique(done["id"], return_counts=True)
    assert len(ids) == 400 and counts.max() == 1     # nothing done twice


def test_keyfields_expand_parameters_and_set_values():
    script = SCRIPTS / "array_sweep.yml"
    default = load_script(script).experiments.keyfields
    assert default == {"seed": list(range(40)), "scale": [1, 2]}
    chosen = load_script(script, {"first": 35, "scale": 7}).experiments.keyfields
    assert chosen == {"seed": list(range(35, 40)), "scale": [1, 7]}


def test_array_tasks_with_their_own_ranges_merge_into_the_whole_grid(tmp_path):
    """One script, one range of seeds per task (--set), merged: the grid of the defaults."""
    script = SCRIPTS / "array_sweep.yml"
    parts = [tmp_path / "low.h5", tmp_path / "high.h5"]
    for output, (first, last) in zip(parts, [(0, 25), (25, 40)]):
        assert main(["run", str(script), "-o", str(output), "--set", f"first={first}",
                     "--set", f"last={last}"]) == 0
    merge(parts, tmp_path / "merged.h5")
    rows = table(tmp_path / "merged.h5", ["id", "seed", "scale", "status", "result"])
    grid = load_script(script).experiments.grid()       # the defaults: seeds 0..39
    assert sorted(rows["id"].astype(str)) == sorted(grid.ids())
    assert (rows["status"] == b"done").all()
    assert (rows["result"] == rows["seed"] * rows["scale"]).all()


def test_merge_claims_its_output_like_a_run(shards, tmp_path):
    output = tmp_path / "merged.h5"
    holder = Claim(output, "20261121-000000-abcdef", "run")
    try:
        with pytest.raises(UserError, match="cannot merge: it is being written by run "
                           "20261121-000000-abcdef"):
            merge(shard_files(shards), output)
    finally:
        holder.release()
    assert not output.exists()


def test_merge_keeps_every_shards_published_arrays_kept_files_and_array_outputs(tmp_path):
    script = SCRIPTS / "shard_roles.yml"
    parts = [tmp_path / f"part{index}.h5" for index in range(2)]
    for index, output in enumerate(parts):     # the side role: a virtual rank 1
        assert main(["run", str(script), "-o", str(output), "--shard", f"{index}/2"]) == 0
    merged, again = tmp_path / "merged.h5", tmp_path / "again.h5"
    merge(parts, merged)
    merge([merged, parts[0]], again)
    for path in (merged, again):
        with h5py.File(path, "r") as file:
            arrays = [row for row in file["values"][()] if text(row["kind"]) == "array"]
            assert sorted(int(row["run"]) for row in arrays) == [0, 1]   # one per shard
            for row in arrays:
                assert file[text(row["value"])][()].sum() == 100
                assert text(row["value"]).startswith(f"/value_arrays/run{row['run']}/")
            assert sorted(file["files"]) == ["run0", "run1"]
            assert bytes(file["files/run1/rank1/kept.txt"][()]) == b"kept\n"
            histograms = experiment_arrays(file)["histogram"]   # a row per experiment
            assert all(histogram is not None for histogram in histograms)
            assert len(file["experiments"]) == 4
