"""Run.Iterate's halo exchange (engine/halo.py): the rows each holder gets from its
neighbours, under MPI (raw buffers between holders) for several dtypes, shapes, halo
widths and partitions of one row, across two Run.Iterate tasks in a row; and between
virtual ranks of one process (messages)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TESTS, log_lines, run_script, values

HEADER = """\
Version: 2
Name: halos
Distributed: True
Timeout: 120
Kernels: {kernels}
Data:
  grid: {{File: grid.npy, Partition: rows}}
Roles:
"""
"""The scripts' first lines: the grid from grid.npy in row partitions."""

SCRIPT = HEADER + """\
  coordinator:
    Sequence:
      - Task: Remote.GetValue
        Config: {{Value: block, From: workers, Reduce: concat, PublishName: whole}}
  workers:
    Sequence:
      - Task: Run.Iterate
        Config: {{Kernel: halos.shift_down, Inputs: [grid], Steps: {down}, Halo: {halo},
                 Args: {{by: {halo}}}}}
      - Task: Run.Iterate
        Config: {{Kernel: halos.shift_up, Inputs: [grid], Steps: {up}, Halo: {halo},
                 Args: {{by: {halo}}}}}
      - Task: Run.Iterate
        Config: {{Kernel: halos.talk, Inputs: [grid], Steps: 3}}
      - Task: Run.Kernel
        Config: {{Kernel: halos.snapshot, Inputs: [grid], Publish: block}}
"""


def shifted(grid: np.ndarray, by: int) -> np.ndarray:
    """`grid`'s rows moved `by` rows down (up if negative), zeros entering."""
    moved = np.zeros_like(grid)
    if by >= 0:
        moved[by:] = grid[:grid.shape[0] - by]
    else:
        moved[:by] = grid[-by:]
    return moved


@pytest.mark.parametrize(("dtype", "shape", "ranks", "halo"), [
    ("float64", (10, 3), 3, 1),        # two holders
    ("int32", (7, 4, 2), 4, 2),        # rows of 4 x 2, two halo rows, blocks of 2, 2, 3 rows
    ("float32", (3, 5), 4, 1),         # one row per holder
    ("int16", (9,), 5, 1),             # a 1-D array: rows are single numbers
])
def test_halo_rows_reach_the_right_neighbour(tmp_path: Path, dtype, shape, ranks, halo):
    grid = (np.arange(np.prod(shape)) + 1).reshape(shape).astype(dtype)
    np.save(tmp_path / "grid.npy", grid)
    down, up = 3, 1
    script = tmp_path / "halos.yml"
    script.write_text(SCRIPT.format(kernels=TESTS / "kernels", halo=halo, down=down, up=up))
    output = tmp_path / "out.h5"
    result = run_script(script, output, ranks)
    assert result.returncode == 0, result.stderr
    expected = grid
    for _ in range(down):
        expected = shifted(expected, halo)
    for _ in range(up):
        expected = shifted(expected, -halo)
    with h5py.File(output, "r") as file:
        whole = values(file)[(0, "whole")]
        logs = [log_lines(file, rank) for rank in range(1, ranks)]
    assert whole.dtype == grid.dtype and whole.shape == grid.shape
    np.testing.assert_array_equal(whole, expected)
    for lines in logs:  # each holder's output of each step, logged in order
        printed = [message for severity, message in lines if severity == "OUTPUT"]
        assert [line.split(" of ")[0] for line in printed] == ["step 0", "step 1", "step 2"]


TWO_ROLES = HEADER + """\
  coordinator: {{Sequence: []}}
  top:
    Sequence:
      - &step
        Task: Run.Iterate
        Config: {{Kernel: halos.shift_down, Inputs: [grid], Steps: 2, Args: {{by: 1}}}}
      - &publish
        Task: Run.Kernel
        Config: {{Kernel: halos.snapshot, Inputs: [grid], Publish: block}}
  bottom: {{Sequence: [*step, *publish]}}
"""


def test_virtual_ranks_exchange_halo_rows_as_messages(tmp_path: Path):
    """One process, two roles: two virtual holders (threads) exchange rows as messages."""
    grid = np.arange(1.0, 13.0).reshape(6, 2)
    np.save(tmp_path / "grid.npy", grid)
    script = tmp_path / "halos.yml"
    script.write_text(TWO_ROLES.format(kernels=TESTS / "kernels"))
    output = tmp_path / "out.h5"
    result = run_script(script, output, None)
    assert result.returncode == 0, result.stderr
    with h5py.File(output, "r") as file:
        found = values(file)
    whole = np.concatenate([found[(1, "block")], found[(2, "block")]])
    np.testing.assert_array_equal(whole, shifted(shifted(grid, 1), 1))
