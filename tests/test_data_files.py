"""Arrays loaded from files, array outputs, kernel results of the wrong kind, the numba cache."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, TESTS, experiments, run_script, values

from distx.engine.data import row_blocks
from distx.results.reader import experiment_arrays

SCRIPT = """\
Version: 2
Name: files
Distributed: True
Kernels: {kernels}
Data:
  table: {{File: "inputs/data.h5:/group/table", Partition: rows}}
  matrix: {{File: inputs/vector.npy, Partition: replicate}}
Roles:
  coordinator:
    Sequence:
      - {{Task: Remote.GetValue, Config: {{Value: table_sum, From: workers}}}}
      - {{Task: Remote.GetValue, Config: {{Value: shape, From: workers, Reduce: max}}}}
      - {{Task: Remote.GetValue, Config: {{Value: matrix_sum, From: workers}}}}
  workers:
    Sequence:
      - Task: Run.Kernel
        Config:
          Kernel: probe.describe
          Inputs: [table]
          Outputs: [offset, rows, table_sum, global_rows]
      - {{Task: Run.Kernel, Config: {{Kernel: probe.shape_of, Inputs: [table], Publish: shape}}}}
      - Task: Run.Kernel
        Config:
          Kernel: probe.replicated_sum
          Inputs: [matrix]
          Outputs: [matrix_sum, matrix_rows]
"""


@pytest.mark.parametrize("ranks", [1, 3])
def test_arrays_from_hdf5_and_npy_files(tmp_path, ranks):
    (tmp_path / "inputs").mkdir()
    table = np.arange(101 * 4, dtype=np.int32).reshape(101, 4)
    vector = np.linspace(0, 1, 57, dtype=np.float32)
    with h5py.File(tmp_path / "inputs" / "data.h5", "w") as file:
        file["group/table"] = table
    np.save(tmp_path / "inputs" / "vector.npy", vector)
    script = tmp_path / "files.yml"
    script.write_text(SCRIPT.format(kernels=TESTS / "kernels"))
    result = run_script(script, tmp_path / "out.h5", ranks)
    assert result.returncode == 0, result.stderr
    holders = max(ranks - 1, 1)
    with h5py.File(tmp_path / "out.h5") as file:
        found = values(file)
    assert found[(0, "table_sum")] == [int(table[a:b].sum()) for a, b in row_blocks(101, holders)]
    assert found[(0, "shape")] == 101 * 1000 + 4
    assert found[(0, "matrix_sum")] == pytest.approx([float(vector.sum())] * holders)


@pytest.mark.parametrize("ranks", [1, 4])
def test_array_outputs_are_reduced_and_stored_per_experiment(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "sweep_arrays.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    assert "sweep: 2 done, 0 error of 2 (100.0%)" in result.stderr
    samples = np.random.default_rng(2).uniform(0.0, 1.0, 1001)
    with h5py.File(output) as file:
        stored_arrays = experiment_arrays(file)["counts"]      # a row per experiment
        for row, stored in zip(experiments(file), stored_arrays):
            expected, _ = np.histogram(samples, bins=row["bins"], range=(0.0, 1.0))
            assert list(stored) == list(expected)
            assert np.isnan(row["counts"])


def test_kernel_returning_the_wrong_kind_is_named_with_its_place(tmp_path):
    result = run_script(SCRIPTS / "wrong_kind.yml", tmp_path / "out.h5", 1)
    assert result.returncode == 1
    assert "kernel probe.wrong_kind" in result.stderr
    assert "probe.py:" in result.stderr and "returned str" in result.stderr


def test_numba_kernels_are_cached_for_later_runs(tmp_path):
    assert run_script(SCRIPTS / "sweep_arrays.yml", tmp_path / "out.h5", 2).returncode == 0
    cached = list((TESTS / "kernels" / "__pycache__").glob("probe.counts-*.nbi"))
    assert cached, "numba wrote no cache index for probe.counts"
