"""Helpers: run distx as users do (a real `mpiexec -n K` subprocess) and read the HDF5 file."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

TESTS = Path(__file__).parent
SCRIPTS = TESTS / "scripts"
JOBS = TESTS.parent / "jobs"
BAD = TESTS / "bad"


def mpiexec() -> list[str]:
    """The launcher beside this Python (the MPI extra) or on PATH, with what it needs to
    run more ranks than cores: Open MPI refuses to without --oversubscribe (and, as root,
    without OMPI_ALLOW_RUN_AS_ROOT*, set below); MPICH needs nothing."""
    beside_python = Path(sys.executable).parent / "mpiexec"
    found = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpiexec not found: install the MPI extra (pip install -e .[mpich,test])")
    return [found, "--oversubscribe"] if open_mpi_launcher() else [found]


@functools.cache
def open_mpi_launcher() -> bool:
    found = Path(sys.executable).parent / "mpiexec"
    launcher = str(found) if found.exists() else shutil.which("mpiexec") or "mpiexec"
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True).stdout
    return "Open MPI" in version or "prte" in version


os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def distx(*args: str, ranks: int | None = None, cwd: Path | None = None,
          timeout: float = 240) -> subprocess.CompletedProcess:
    """`mpiexec -n ranks python -m distx args...` (no mpiexec when ranks is None)."""
    command = [sys.executable, "-m", "distx", *map(str, args)]
    if ranks is not None:
        command = [*mpiexec(), "-n", str(ranks), *command]
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(LAUNCH_TRIES):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd=cwd, env=environment, stdin=subprocess.DEVNULL)
        if LAUNCHER_DID_NOT_START not in result.stderr:
            break
    return result


# Open MPI's prterun now and then fails to open its PMIx listener socket and exits (code
# 213) before starting any rank (seen in CI; a known PMIx flake, e.g. lfortran#8610).
# Nothing ran, so launching again tests the same thing.
LAUNCHER_DID_NOT_START = "The PMIx server's listener thread failed to start"
LAUNCH_TRIES = 3


def run_script(script: Path, output: Path, ranks: int | None, *extra: str,
               timeout: float = 240) -> subprocess.CompletedProcess:
    return distx(script, "--output", output, *extra, ranks=ranks, timeout=timeout)


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def milestones(file: h5py.File) -> dict[int, list[str]]:
    reached: dict[int, list[str]] = defaultdict(list)
    for row in sorted(file["milestones"][()], key=lambda row: row["time"]):
        reached[int(row["rank"])].append(text(row["name"]))
    return dict(reached)


def values(file: h5py.File) -> dict[tuple[int, str], object]:
    """(rank, key) -> value as recorded (JSON decoded, arrays read)."""
    import json

    found = {}
    for row in file["values"][()]:
        kind, value = text(row["kind"]), text(row["value"])
        found[(int(row["rank"]), text(row["key"]))] = (
            file[value][()] if kind == "array" else json.loads(value) if kind == "json"
            else value)
    return found


def log_lines(file: h5py.File, rank: int | None = None) -> list[tuple[str, str]]:
    return [(text(row["severity"]), text(row["message"])) for row in file["logs"][()]
            if rank is None or row["rank"] == rank]


def experiments(file: h5py.File) -> np.ndarray:
    return file["experiments"][()]


def done_count(output: Path) -> int:
    """Experiments `done` in a results file, as `distx status` reports while a run writes."""
    try:
        shown = distx("status", output, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    line = next((line for line in shown.stdout.splitlines()
                 if line.startswith("experiments:")), "")
    return int(line.split()[1]) if line else 0
