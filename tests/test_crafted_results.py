"""Crafted or damaged results files: every command that reads one refuses it with one line
(exit 2) and leaves it byte for byte as it was (issue 11: a group where /experiments
belongs broke show/status/export, reset crashed on a table without `status` and changed
the file, and a billion-row /runs table made status run out of memory)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import TESTS, distx

VERSION_1 = TESTS / "data" / "v1"


def _group_for_experiments(file: h5py.File) -> None:
    del file["experiments"]
    file.create_group("experiments")


def _experiments_without_status(file: h5py.File) -> None:
    rows = file["experiments"][()]
    kept = [name for name in rows.dtype.names if name != "status"]
    del file["experiments"]
    file.create_dataset("experiments", data=rows[kept].astype(
        np.dtype([(name, rows.dtype[name]) for name in kept])))


def _billion_runs(file: h5py.File) -> None:
    dtype = file["runs"].dtype
    del file["runs"]
    file.create_dataset("runs", shape=(10**9,), dtype=dtype, chunks=(1024,))  # sparse


CRAFTED = {"group": (_group_for_experiments, "/experiments is not a one-dimensional table"),
           "no_status": (_experiments_without_status, "/experiments lacks the column(s) status"),
           "billion_runs": (_billion_runs, "/runs has 1,000,000,000 rows")}
COMMANDS = {"show": ["show"], "status": ["status"], "export": ["export", "--csv", "-"],
            "reset": ["reset", "--status", "error"]}


@pytest.fixture(params=sorted(CRAFTED))
def crafted(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    craft, message = CRAFTED[request.param]
    path = tmp_path / "crafted.h5"
    shutil.copy(VERSION_1 / "sweep.h5", path)
    with h5py.File(path, "r+") as file:
        craft(file)
    return path, message


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_crafted_file_is_refused_in_one_line_and_left_as_it_was(
        crafted: tuple[Path, str], command: str) -> None:
    path, message = crafted
    before = path.read_bytes()
    result = distx(*COMMANDS[command], path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert path.read_bytes() == before


def test_resume_of_a_crafted_file_is_refused_before_anything_runs(
        crafted: tuple[Path, str]) -> None:
    path, message = crafted
    before = path.read_bytes()
    result = distx(VERSION_1 / "sweep.yml", "--output", path, "--resume", "--force",
                   timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert path.read_bytes() == before
