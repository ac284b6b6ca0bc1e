"""Runtime faults on the worker side: odd results that must fail one task, not the run,
and --grace as a hard bound on a stop."""

from __future__ import annotations

import h5py
from conftest import SCRIPTS, run_script, text


def test_kernel_returning_an_int_too_large_for_float64_fails_only_its_task(tmp_path):
    """10**400 from a kernel on a worker used to abort the job, leaving the file Running."""
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "huge_result.yml", output, 3, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Errored"
        rows = file["experiments"][()]
        tasks = file["tasks"][()]
    failed = rows[rows["status"] == b"error"]
    assert list(failed["seed"]) == [7]
    assert "integer too large for a 64-bit number" in text(failed["error"][0])
    done = rows[rows["status"] == b"done"]
    assert len(done) == 29 and (done["result"] == done["seed"]).all()
    errors = {int(row["rank"]): text(row["error"]) for row in tasks if row["status"] == b"error"}
    assert list(errors) == [1] and "integer too large for a 64-bit number" in errors[1]
