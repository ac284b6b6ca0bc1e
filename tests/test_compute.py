"""Data partitioning, kernels on local partitions, sweeps with folds and retries."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import JOBS, SCRIPTS, experiments, run_script, text, values

from distx.bench.simulation import sweep_script
from distx.engine.data import row_blocks
from distx.engine.ids import SHARED_FROM
from distx.script.grid import Grid


@pytest.mark.parametrize("ranks", [1, 2, 3, 8])
def test_rows_and_replicate_partitions_match_numpy(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "partitions.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    table = np.random.default_rng(4).integers(0, 1000, (1003, 3))
    matrix = np.random.default_rng(9).normal(0.0, 1.0, (17, 5)).astype(np.float32)
    holders = max(ranks - 1, 1)
    with h5py.File(output, "r") as file:
        found = values(file)
    offsets, rows = found[(0, "offset")], found[(0, "rows")]
    assert [(start, start + count) for start, count in zip(offsets, rows)] == \
        row_blocks(1003, holders)
    assert max(rows) - min(rows) <= 1 and sum(rows) == 1003
    expected = [int(table[start:stop].sum()) for start, stop in row_blocks(1003, holders)]
    assert found[(0, "table_sum")] == expected
    assert found[(0, "global_rows")] == [1003] * holders
    assert found[(0, "matrix_sum")] == pytest.approx([float(matrix.sum())] * holders)
    assert found[(0, "matrix_rows")] == [17] * holders


@pytest.mark.parametrize("ranks", [1, 3, 8])
def test_sweep_over_row_partitions_reduces_like_numpy(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "sweep_rows.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    samples = np.random.default_rng(7).uniform(0.0, 1.0, (10001, 2))
    radius2 = (samples ** 2).sum(axis=1)
    with h5py.File(output, "r") as file:
        rows = experiments(file)
    assert [text(status) for status in rows["status"]] == ["done"] * 4
    for row in rows:
        assert row["inside"] == np.count_nonzero(radius2 <= row["radius"] ** 2)
    assert set(rows["rank"]) == ({0} if ranks == 1 else {-1})  # -1: all holders


@pytest.mark.parametrize("ranks", [1, 4])
def test_failing_experiments_are_retried_then_recorded(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "flaky.yml", output, ranks, "--set", f"marker={tmp_path}")
    assert result.returncode == 1
    assert "2 experiment(s) failed" in result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(output, "r") as file:
        table = pd.DataFrame(file["experiments"][()])
        errors = {row["id"]: text(row["error"]) for row in file["errors"][()]}  # last wins
        assert text(file.attrs["state"]) == "Finished"
    assert len(table) == 24 and list(table.columns[:4]) == ["id", "index", "seed", "label"]
    assert table["id"].is_unique
    status = dict(zip(zip(table["seed"], table["label"]), table["status"].str.decode("ascii")))
    failed = table[table["status"] == b"error"]
    assert sorted(failed["seed"]) == [3, 3]
    assert set(failed["attempts"]) == {3}
    assert all("ValueError: bad seed 3" in errors[row_id] for row_id in failed["id"])
    assert all("Traceback" in errors[row_id] for row_id in failed["id"])
    flaky = table[table["seed"] == 5]
    assert sorted(flaky["attempts"]) == [1, 2]  # the marker makes only the first call fail
    with h5py.File(output, "r") as file:
        history = file["attempts"][()]
    for row in flaky.itertuples():  # an experiment starts with its first attempt
        mine = history[history["id"] == row.id]
        assert row.start == mine["start"].min() and row.end == mine["end"].max()
    done = table[table["status"] == b"done"]
    assert list(done["result"]) == [2.0 * seed for seed in done["seed"]]
    assert status[(0, b"a")] == "done"
    assert (done["end"] >= done["start"]).all() and set(done["host"]) != {b""}
    if ranks == 4:
        assert set(done["rank"]) <= {1, 2, 3}


def test_kernel_that_cannot_compile_stops_the_sweep_naming_it(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "badly_typed.yml", output, 2)
    assert result.returncode == 1
    assert "kernel flaky.badly_typed cannot compile" in result.stderr
    assert "flaky.py" in result.stderr


def test_experiment_ids_are_stable_across_runs(tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    for output, ranks in ((first, 1), (second, 3)):
        run_script(SCRIPTS / "flaky.yml", output, ranks, "--set", f"marker={tmp_path}")
    with h5py.File(first) as a, h5py.File(second) as b:
        assert list(experiments(a)["id"]) == list(experiments(b)["id"])


def test_ids_computed_by_the_holders_are_those_of_one_rank_alone(tmp_path):
    """Above SHARED_FROM experiments rank 0 asks the holders for most of the ids."""
    count = SHARED_FROM + 5000
    script = tmp_path / "sweep.yml"
    script.write_text(sweep_script(count))
    alone, shared = tmp_path / "alone.h5", tmp_path / "shared.h5"
    for output, ranks in ((alone, 1), (shared, 4)):
        assert run_script(script, output, ranks).returncode == 0
    with h5py.File(alone) as a, h5py.File(shared) as b:
        assert experiments(a)["id"].tolist() == experiments(b)["id"].tolist()
        assert experiments(b)["id"].tolist() == Grid({"seed": list(range(count))}).id_column(
            ).tolist()
        assert (experiments(b)["status"] == b"done").all()


@pytest.mark.parametrize("ranks", [1, 4])
def test_pi_job(tmp_path, ranks):
    output = tmp_path / "pi.h5"
    result = run_script(JOBS / "pi.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    with h5py.File(output, "r") as file:
        table = experiments(file)
        found = values(file)
    assert len(table) == 32
    for row in table[:6]:
        points = np.random.RandomState(row["seed"]).random_sample((row["samples"], 2))
        assert row["pi"] == pytest.approx(4.0 * np.mean((points ** 2).sum(axis=1) <= 1.0))
    assert found[(0, "n_total")] == 4_000_000


def test_moments_job(tmp_path):
    output = tmp_path / "moments.h5"
    result = run_script(JOBS / "moments.yml", output, 3)
    assert result.returncode == 0, result.stderr
    data = np.random.default_rng(11).normal(5.0, 2.0, 1000003)
    with h5py.File(output, "r") as file:
        found = values(file)
    assert found[(0, "n")] == data.size
    assert found[(0, "mean")] == pytest.approx(data.mean(), rel=1e-12)
    assert found[(0, "variance")] == pytest.approx(data.var(), rel=1e-9)
    assert found[(0, "low")] == data.min() and found[(0, "high")] == data.max()
    expected, _ = np.histogram(data, bins=20, range=(-5.0, 15.0))
    assert list(found[(0, "histogram")]) == list(expected)


@pytest.mark.parametrize("ranks", [1, 3])
def test_ridge_job(tmp_path, ranks):
    output = tmp_path / "ridge.h5"
    result = run_script(JOBS / "ridge.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    Xy = np.random.default_rng(3).normal(0.0, 1.0, (5000, 9))
    X, noise = Xy[:, :8], Xy[:, 8]
    y = X @ (1.0 / np.arange(1, 9)) + 0.1 * noise
    with h5py.File(output, "r") as file:
        table = experiments(file)
    assert len(table) == 35 and sorted(set(table["fold"])) == [0, 1, 2, 3, 4]
    for row in table:
        test = np.arange(5000) % 5 == row["fold"]
        Xt, yt = X[~test], y[~test]
        w = np.linalg.solve(Xt.T @ Xt + row["alpha"] * np.eye(8), Xt.T @ yt)
        assert row["mse"] == pytest.approx(np.mean((X[test] @ w - y[test]) ** 2), rel=1e-8)


def numpy_heat(grid: np.ndarray, steps: int, alpha: float) -> np.ndarray:
    grid = grid.copy()
    for _ in range(steps):
        old = grid.copy()
        grid[1:-1, 1:-1] = old[1:-1, 1:-1] + alpha * (
            old[:-2, 1:-1] + old[2:, 1:-1] + old[1:-1, :-2] + old[1:-1, 2:] - 4 * old[1:-1, 1:-1])
    return grid


@pytest.mark.parametrize("ranks", [1, 2, 5, 8])
def test_heat_job_with_halo_exchange(tmp_path, ranks):
    output = tmp_path / "heat.h5"
    result = run_script(JOBS / "heat.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    expected = numpy_heat(np.random.default_rng(5).uniform(0.0, 1.0, (400, 128)), 200, 0.2)
    with h5py.File(output, "r") as file:
        found = values(file)
    np.testing.assert_allclose(found[(0, "final_grid")], expected, rtol=1e-12)
    assert found[(0, "heat")] == pytest.approx(expected.sum())


def test_array_beyond_mpi_count_limit(tmp_path):
    output = tmp_path / "large.h5"
    result = run_script(SCRIPTS / "large.yml", output, 2, timeout=600)
    assert result.returncode == 0, result.stderr
    big = np.random.default_rng(1).integers(0, 3, 2147483700, dtype=np.uint8)
    expected = int(big.sum(dtype=np.int64))
    del big
    with h5py.File(output, "r") as file:
        assert values(file)[(0, "total")] == expected


def test_a_kernel_that_is_not_additive_gives_the_same_results_for_any_rank_count(tmp_path):
    """Issue 11: without Partition a non-additive kernel's result changed with -n, exit 0.
    Partition is now required, a rows input needs Reduce, and replicate is exact."""
    X = np.random.default_rng(5).normal(0.0, 1.0, (101, 3))
    found = {}
    for ranks in (1, 3):
        output = tmp_path / f"out{ranks}.h5"
        result = run_script(SCRIPTS / "not_additive.yml", output, ranks)
        assert result.returncode == 0, result.stderr
        with h5py.File(output, "r") as file:
            rows = experiments(file)
        found[ranks] = {int(row["seed"]): float(row["value"]) for row in rows}
    expected = {seed: X.sum() * 0.01 + 2 * seed for seed in (-1, 0, 1)}
    for ranks, results in found.items():
        assert results == pytest.approx(expected), ranks
