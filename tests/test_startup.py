"""Start-up time: what a rank imports is what its part of the run needs.

Only rank 0 reads YAML, checks the script and writes HDF5, so the other ranks never import
yaml, h5py or the results writer (each costs start-up time on every rank of every run), and
no rank imports numba for a script without a numba kernel. Checked in real `mpiexec` runs:
every process reports its modules as it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import mpiexec

RANK_ZERO_ONLY = ("h5py", "yaml", "distx.results.writer", "distx.check.checks")
WATCHED = (*RANK_ZERO_ONLY, "numba")

# Each process prints the watched modules it imported when it exits; rank 0 is the one that
# imported the writer.
REPORT_AT_EXIT = f"""\
import atexit, json, sys
atexit.register(lambda: print("MODULES", json.dumps(sorted(set({WATCHED!r}) & set(sys.modules))),
                              flush=True))
from distx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def modules_per_process(tmp_path, script: str, ranks: int) -> list[list[str]]:
    path = tmp_path / "script.yml"
    path.write_text(script)
    run = subprocess.run([*mpiexec(), "-n", str(ranks), sys.executable, "-c", REPORT_AT_EXIT,
                          str(path), "-o", str(tmp_path / "out.h5")],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return sorted(json.loads(line.split(" ", 1)[1]) for line in run.stdout.splitlines()
                  if line.startswith("MODULES "))


def test_workers_import_neither_yaml_nor_h5py_nor_numba_without_numba_kernels(tmp_path):
    script = """\
Version: 2
Name: hello
Sequence:
  - {Task: Run.Message, Config: {Message: hello}}
"""
    reports = modules_per_process(tmp_path, script, 3)
    assert reports == [[], [], sorted(RANK_ZERO_ONLY)]
