"""The results file of format version 3 read by tools that know nothing of distx (pandas'
read_hdf with PyTables, h5dump, plain h5py), and files of versions 1 and 2 read, resumed
and converted.

One real run of tests/scripts/ramps.yml on 3 ranks makes the file most tests here read: an
array output of one shape (steps), one of several shapes (counts), a number (half), and two
experiments that fail with a two-line error.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, TESTS, distx, run_script, text

import distx as distx_package
from distx.errors import ResultsWriteError
from distx.results import checkpoint
from distx.results.layout import FORMAT_VERSION
from distx.results.reader import error_texts, experiment_arrays, read_results
from distx.results.writer import ResultsFile, RunIdentity

DATA = TESTS / "data"
README = TESTS.parent / "README.md"


@pytest.fixture(scope="module")
def ramps(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("layout") / "ramps.h5"
    run = run_script(SCRIPTS / "ramps.yml", output, 3)
    assert run.returncode == 1, run.stderr        # seed 3 fails on purpose
    return output


def expected_steps(seed: int) -> list[float]:
    return (np.arange(4.0) * seed).tolist()


def without_distx(code: str, *arguments: object) -> str:
    """Run `code` in a Python that has pandas and h5py but does not import distx."""
    guard = "import sys; sys.modules['distx'] = None\n"
    done = subprocess.run([sys.executable, "-c", guard + code, *map(str, arguments)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ----- pandas and h5py without distx -----------------------------------------------------------
def test_pandas_read_hdf_reads_experiments_and_attempts(ramps):
    printed = without_distx("""
import json, sys
import pandas as pd
experiments = pd.read_hdf(sys.argv[1], "experiments")
attempts = pd.read_hdf(sys.argv[1], "attempts")
status = experiments.status
print(json.dumps({"columns": list(experiments.columns), "rows": len(experiments),
                  "done": int((status == "done").sum()), "attempts": len(attempts),
                  "failed": int((attempts.status == "error").sum()),
                  "seeds": sorted(set(experiments.seed[status == "error"].tolist()))}))
""", ramps)
    found = json.loads(printed)
    assert found["columns"] == ["id", "index", "seed", "label", "status", "attempts", "rank",
                                "host", "start", "end", "steps", "counts", "half"]
    assert found["rows"] == 16 and found["done"] == 14 and found["seeds"] == [3]
    assert found["attempts"] == 18 and found["failed"] == 4    # Retries: 1


def test_errors_join_the_experiments_by_id(ramps):
    printed = without_distx("""
import sys
import h5py, pandas as pd
experiments = pd.read_hdf(sys.argv[1], "experiments")
with h5py.File(sys.argv[1], "r") as f:
    rows = f["errors"][()]
errors = pd.DataFrame({"id": rows["id"].astype(str),
                       "error": [text.decode() for text in rows["error"]]})
last = errors.drop_duplicates("id", keep="last")
joined = experiments.merge(last, on="id", how="left")
failed = joined[joined.status == "error"]
print(len(failed), all("its second line says why" in e for e in failed.error))
""", ramps)
    assert printed.split() == ["2", "True"]


def test_h5dump_shows_text_without_padding(ramps):
    dumped = subprocess.run(["h5dump", str(ramps)], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    assert "\\000" not in dumped
    assert '"done",' in dumped and '"bb",' in dumped
    assert "STRPAD H5T_STR_NULLTERM" in dumped
    errors = subprocess.run(["h5dump", "-d", "/errors", str(ramps)], capture_output=True,
                            text=True, timeout=120, check=True).stdout
    assert "its second line says why" in errors
    with h5py.File(ramps, "r") as file:     # text of the longest length keeps its last byte
        hosts = {text(host) for host in file["provenance/hosts"][()]}
        assert hosts == {text(host) for host in file["attempts"]["host"]}
        assert {text(label) for label in file["experiments"]["label"]} == {"a", "bb"}


def test_array_outputs_are_read_with_plain_h5py(ramps):
    with h5py.File(ramps, "r") as file:
        rows = file["experiments"][()]
        steps = file["experiment_arrays/steps"]
        counts = file["experiment_arrays/counts"]
        assert isinstance(steps, h5py.Dataset) and steps.shape == (len(rows), 4)
        values, starts, shapes = (counts[name][()] for name in ("values", "start", "shape"))
        for row, experiment in enumerate(rows):
            if experiment["status"] != b"done":
                assert np.isnan(steps[row]).all() and starts[row] == -1
                continue
            seed = int(experiment["seed"])
            assert steps[row].tolist() == expected_steps(seed)
            size = int(shapes[row][0])
            assert values[starts[row]:starts[row] + size].tolist() == list(range(seed % 3 + 1))


def test_distx_load_gives_the_arrays_in_their_cells(ramps):
    df = distx_package.load(ramps, arrays=True)
    done = df[df.status == "done"]
    assert all(row.steps.tolist() == expected_steps(row.seed) for row in done.itertuples())
    assert all(row.counts.tolist() == list(range(row.seed % 3 + 1))
               for row in done.itertuples())
    assert df[df.status == "error"].steps.isna().all()
    errors = distx_package.load(ramps, "errors")
    assert list(errors.columns) == ["run", "id", "part", "attempt", "error"]
    assert len(errors) == 4 and set(errors.attempt) == {1, 2}


def test_the_readme_shows_the_h5py_one_liner_and_it_works_during_a_run(tmp_path):
    assert 'h5py.File("pi.h5", "r", locking=False)' in README.read_text()
    script = tmp_path / "slow.yml"
    script.write_text(f"""\
Version: 2
Name: slow
Kernels: {TESTS / "kernels"}
Experiments:
  Keyfields:
    seed: {{stop: 400}}
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: probe.slow_square, Args: {{pause: 0.02}}}}
""")
    output = tmp_path / "slow.h5"
    command = [sys.executable, "-m", "distx", str(script), "-o", str(output)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as run:
        try:
            seen = None
            deadline = time.monotonic() + 60
            while seen is None and time.monotonic() < deadline and run.poll() is None:
                seen = without_distx("""
import sys, h5py
with h5py.File(sys.argv[1], "r", locking=False) as f:
    rows = f["experiments"][()] if "experiments" in f else []
    print(f.attrs["state"], sum(row["status"] == b"done" for row in rows))
""", output).split() if output.exists() else None
                if seen and seen[1] == "0":
                    seen = None
                time.sleep(0.2)
            assert run.poll() is None, "the run ended before a reader saw it running"
            assert seen is not None and seen[0] == "Running" and int(seen[1]) < 400
        finally:
            run.terminate()
            run.wait(timeout=60)


# ----- files of format versions 1 and 2 --------------------------------------------------------
OLD = {1: DATA / "v1" / "sweep.h5", 2: DATA / "v2" / "sweep.h5"}


@pytest.mark.parametrize("version", sorted(OLD))
def test_an_older_file_opens_with_show_status_export_and_load(version, tmp_path):
    path = OLD[version]
    with h5py.File(path, "r") as file:
        assert file.attrs["format_version"] == version
    for command in (["show"], ["status"], ["export", "--csv", "-"],
                    ["export", "--csv", "-", "--table", "errors"]):
        result = distx(command[0], path, *command[1:])
        assert result.returncode == 0, result.stderr
    errors = list(csv.DictReader(io.StringIO(result.stdout)))   # made from the old columns
    assert len(errors) == (0 if version == 1 else 4)
    assert all("its second line says why" in row["error"] for row in errors)
    df = distx_package.load(path, arrays=True)
    assert (df.status == "done").sum() == (10 if version == 1 else 14)
    if version == 2:
        failed = df[df.status == "error"]
        assert len(failed) == 2 and all("its second line says why" in e for e in failed.error)
        done = df[df.status == "done"]
        assert all(row.steps.tolist() == expected_steps(row.seed) for row in done.itertuples())
        assert "its second line says why" in distx("show", path).stdout
        assert len(distx_package.load(path, "errors")) == 4    # every failed attempt


def test_resume_converts_a_version_2_file_to_version_3_losing_nothing(tmp_path):
    copy = tmp_path / "sweep.h5"
    shutil.copy(OLD[2], copy)
    before_arrays = read_results(copy, experiment_arrays)
    before_errors = read_results(copy, error_texts)
    # --force: the fingerprint of tests/kernels changes whenever a test kernel is added
    resumed = run_script(DATA / "v2" / "sweep.yml", copy, None, "--resume", "--force")
    assert resumed.returncode == 1, resumed.stderr         # seed 3 fails again
    with h5py.File(copy, "r") as file:
        assert file.attrs["format_version"] == FORMAT_VERSION
        assert "error" not in file["experiments"].dtype.names
        assert "error" not in file["attempts"].dtype.names
        assert isinstance(file["experiment_arrays/steps"], h5py.Dataset)
        errors = file["errors"][()]
        assert list(file["runs"]["run"]) == [0, 1]
    after = read_results(copy, experiment_arrays)
    for output, arrays in before_arrays.items():
        for old, new in zip(arrays, after[output]):
            assert (old is None) == (new is None) and (old is None or
                                                     old.tolist() == new.tolist())
    old_runs = [text(row["error"]) for row in errors if row["run"] == 0]
    assert sorted(set(old_runs)) == sorted(set(before_errors.values()))
    assert len(errors[errors["run"] == 1]) == 4            # this run's failed attempts
    printed = without_distx("import sys, pandas as pd; print(len(pd.read_hdf(sys.argv[1], "
                            "'experiments')))", copy)
    assert printed.strip() == "16"


def test_resume_converts_a_version_1_file(tmp_path):
    copy = tmp_path / "sweep.h5"
    shutil.copy(OLD[1], copy)
    resumed = run_script(DATA / "v1" / "sweep12.yml", copy, None, "--resume", "--force")
    assert resumed.returncode == 0, resumed.stderr
    printed = without_distx("import sys, pandas as pd; e = pd.read_hdf(sys.argv[1], "
                            "'experiments'); print(len(e), (e.result == e.seed ** 2).all())",
                            copy)
    assert printed.split() == ["12", "True"]


def test_a_conversion_killed_before_its_checkpoint_leaves_the_old_file_as_it_was(
        tmp_path, monkeypatch):
    copy = tmp_path / "sweep.h5"
    shutil.copy(OLD[2], copy)
    before = copy.read_bytes()

    def killed(*_):
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    identity = RunIdentity("v2-sweep", "run-b", "Version: 2\n", "sweep.yml", "sha",
                           dict.fromkeys(("script", "kernels", "data"), "changed"),
                           {"world_size": 1}, ["h0"])
    with pytest.raises(ResultsWriteError):
        ResultsFile.open(copy, identity, resume=True, force=True)
    assert copy.read_bytes() == before
    assert not checkpoint.leftovers(copy)


def test_reset_of_a_version_2_file_keeps_its_version_and_its_errors(tmp_path):
    copy = tmp_path / "sweep.h5"
    shutil.copy(OLD[2], copy)
    result = distx("reset", copy, "--status", "error")
    assert result.returncode == 0, result.stderr
    with h5py.File(copy, "r") as file:         # not labelled 3 without being converted
        assert file.attrs["format_version"] == 2
        assert "error" in file["experiments"].dtype.names
    assert (distx_package.load(copy).status == "created").sum() == 2


def test_an_array_output_of_text_is_refused_naming_the_kernel():
    from types import SimpleNamespace

    from distx.engine.kernels import outputs_of
    from distx.errors import TaskFailed

    kernel = SimpleNamespace(name="m.f", place="m.py:3")
    assert outputs_of(np.arange(3), ["x"], kernel)["x"].tolist() == [0, 1, 2]
    with pytest.raises(TaskFailed, match=r"kernel m.f \(m.py:3\) returned an array of <U1 "
                                         r"for 'x': return an array of numbers"):
        outputs_of(np.array(["a"]), ["x"], kernel)
