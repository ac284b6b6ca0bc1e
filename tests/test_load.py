"""Results in a notebook: `distx.load` into pandas, and the file read without distx.

One real run of tests/scripts/loading.yml on 2 ranks makes the file every test here reads.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import SCRIPTS, run_script

import distx
from distx.errors import UserError


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("loading") / "loading.h5"
    run = run_script(SCRIPTS / "loading.yml", output, 2)
    assert run.returncode == 1, run.stderr      # seed 2 fails on purpose
    return output


def test_importing_distx_imports_neither_pandas_nor_h5py():
    code = ("import sys, distx; print(sorted({'pandas', 'h5py', 'numpy', 'distx.results'}"
            " & set(sys.modules)))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
    assert imported.stdout.strip() == "[]"


def test_the_experiments_table_as_a_person_expects_it(results):
    df = distx.load(results)
    assert len(df) == 8
    assert (df.status == "done").sum() == 6 and (df.status == "error").sum() == 2
    assert set(df.method) == {"a", "long-method"}
    assert df.seed.dtype == np.int64 and df.value.dtype == np.float64
    assert isinstance(df.id[0], str) and isinstance(df.host[0], str)
    assert str(df.start.dt.tz) == "UTC" and df.end.notna().all()
    done = df[df.status == "done"]
    assert (done.value == done.seed * done.method.str.len() + 0.5).all()
    failed = df[df.status == "error"]
    assert set(failed.seed) == {2}
    assert all("bad seed 2\nsecond line of the cause" in text for text in failed.error)
    assert (done.error == "").all()


def test_array_outputs_with_arrays_true(results):
    df = distx.load(results, arrays=True)
    for row in df[df.status == "done"].itertuples():
        np.testing.assert_array_equal(row.steps, np.arange(row.seed + 1))
    assert df[df.status == "error"].steps.isna().all()


def test_the_other_tables(results):
    assert len(distx.load(results, "attempts")) == 8
    runs = distx.load(results, "runs")
    assert len(runs) == 1 and runs.exit_code[0] == 1
    assert isinstance(runs.started[0], pd.Timestamp)
    milestones = distx.load(results, "milestones")
    assert {"Init", "Finished"} <= set(milestones.name) and milestones.time.notna().all()
    errors = distx.load(results, "errors")
    assert len(errors) == 2 and all("second line of the cause" in text for text in errors.error)
    for table in ("values", "tasks", "logs"):
        assert isinstance(distx.load(results, table), pd.DataFrame)
    with pytest.raises(UserError, match="no table 'nope'"):
        distx.load(results, "nope")


def test_several_shards_are_united_by_id(results, tmp_path):
    for name in ("shard-1.h5", "shard-2.h5"):
        shutil.copy(results, tmp_path / name)
    df = distx.load(str(tmp_path / "shard-*.h5"))
    assert len(df) == 8 and set(df.file) == {str(tmp_path / "shard-1.h5")}
    attempts = distx.load([tmp_path / "shard-1.h5", tmp_path / "shard-2.h5"], "attempts")
    assert len(attempts) == 16 and attempts.file.nunique() == 2
