"""Runtime faults: kernels that crash their rank, leave, or run past their Timeout, and
waits that time out. Every run must end (bounded by the timeouts) with a results file
holding what finished and, where a rank could say it, the error. Where scripts wait 600 s,
a 60 s subprocess limit proves that nothing waited for those timeouts."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, TESTS, distx, experiments, milestones, run_script, text

from distx.results.reader import error_texts, read_results


def table_of(output) -> np.ndarray:
    with h5py.File(output, "r") as file:
        return experiments(file)


def task_errors(output) -> dict[tuple[int, int], str]:
    with h5py.File(output, "r") as file:
        return {(int(row["rank"]), int(row["index"])): text(row["error"])
                for row in file["tasks"][()]}


def run_state(output) -> tuple[str, int]:
    with h5py.File(output, "r") as file:
        return text(file.attrs["state"]), int(file.attrs["exit_code"])


@pytest.mark.parametrize("ranks", [1, 3])
def test_worker_kernel_past_its_timeout_ends_the_run(tmp_path, ranks):
    output = tmp_path / "out.h5"
    # Every wait in the script allows 600 s and the kernel sleeps an hour.
    result = run_script(SCRIPTS / "stuck_worker.yml", output, ranks, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "ran past its Timeout of 1 s" in result.stderr and "Traceback" not in result.stderr
    assert run_state(output) == ("Errored", 1)
    errors = task_errors(output)
    assert "kernel faults.sleep on rank 1 (stuck) ran past its Timeout of 1 s" in errors[(1, 0)]
    assert "rank 1 (stuck) errored without reaching milestone Computed" in errors[(0, 1)]
    with h5py.File(output, "r") as file:
        reached = milestones(file)
        assert reached[1][-1] == "Errored" and reached[0][-1] == "Errored"
        assert all(reached[rank][-1] == "Cancelled" for rank in range(2, ranks))


def test_coordinator_kernel_past_its_timeout_closes_the_file(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "stuck_coordinator.yml", output, None, timeout=120)
    assert result.returncode == 1, result.stderr
    assert run_state(output) == ("Errored", 1)
    assert "ran past its Timeout of 1 s" in task_errors(output)[(0, 1)]
    assert distx("show", output).returncode == 0


def test_sweep_kernel_past_its_timeout_then_resume(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "faulty_sweep.yml", output, 3, "--set", "sleep_at=20",
                        timeout=120)
    assert result.returncode == 1, result.stderr
    assert run_state(output) == ("Errored", 1)
    table = table_of(output)
    stuck = table[table["seed"] == 20][0]
    error = read_results(output, error_texts)[stuck["id"]]      # /errors, joined by id
    assert stuck["status"] == b"error" and "ran past its Timeout of 2 s" in error
    assert "{'seed': 20}" in error
    done = table[table["status"] == b"done"]
    assert len(done) >= 19 and (done["result"] == done["seed"] ** 2).all()
    assert set(table["status"]) <= {b"done", b"error", b"created"}  # nothing left running
    resumed = run_script(SCRIPTS / "faulty_sweep.yml", output, 3, "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    table = table_of(output)
    assert (table["status"] == b"done").all() and (table["result"] == table["seed"] ** 2).all()


def test_numba_kernel_holding_the_gil_is_ended_by_the_backstop(tmp_path):
    """The watchdog thread gets no GIL: faulthandler's timer ends the rank, the launcher
    the job. No error can be recorded, but the file stays readable."""
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "stuck_numba.yml", output, 3, timeout=60)
    assert result.returncode != 0
    assert "Timeout (0:00:0" in result.stderr  # faulthandler's stacks of the stuck rank
    shown = distx("show", output)
    assert shown.returncode == 0 and "no end recorded" in shown.stdout


BLOCKED_DUMP = textwrap.dedent("""\
    import fcntl, os, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from faults import spin
    from distx.engine import watchdog

    spin(np.zeros(1), 1)  # compiled (or loaded) before the watch starts
    watchdog.BACKSTOP_MARGIN = 0.0
    # Fill stderr, a pipe nobody reads, so that faulthandler's stack dump blocks.
    flags = fcntl.fcntl(2, fcntl.F_GETFL)
    fcntl.fcntl(2, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(2, b"x" * 4096)
    except BlockingIOError:
        fcntl.fcntl(2, fcntl.F_SETFL, flags)
    with watchdog.WATCHDOG.watch(0.2, lambda: None):
        spin(np.zeros(1), 10 ** 15)  # holds the GIL
    """)


def test_backstop_ends_the_process_when_its_stack_dump_blocks():
    """faulthandler exits only after its dump is written: with stderr a full pipe the
    write blocks for ever (a hang seen once in CI), and the second backstop, SIGALRM
    with its default action, ends the process while the kernel still holds the GIL."""
    child = subprocess.Popen([sys.executable, "-c", BLOCKED_DUMP, str(TESTS / "kernels")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        returncode = child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
        child.stderr.close()
    assert returncode == -signal.SIGALRM


def test_kernel_that_crashes_its_rank_then_resume(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "faulty_sweep.yml", output, 3, "--set", "crash_at=50",
                        "--set", "pause=0.05", timeout=120)
    assert result.returncode != 0
    assert "Fatal Python error: Aborted" in result.stderr
    assert "faults.py\", line" in result.stderr  # the kernel's own line, from faulthandler
    table = table_of(output)
    before = {row["id"] for row in table[table["status"] == b"done"]}
    assert before and all(row["result"] == row["seed"] ** 2
                          for row in table[table["status"] == b"done"])
    resumed = run_script(SCRIPTS / "faulty_sweep.yml", output, 3, "--resume", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    table = table_of(output)
    assert (table["status"] == b"done").all()
    with h5py.File(output, "r") as file:
        attempts = file["attempts"][()]
    second_run = attempts[attempts["run"] == attempts["run"].max()]
    assert not before & set(second_run["id"])  # nothing done before ran again


def test_kernel_calling_sys_exit_is_a_task_error(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "leaving_kernel.yml", output, 3, timeout=120)
    assert result.returncode == 1, result.stderr
    assert run_state(output) == ("Errored", 1)
    assert "raised SystemExit: 0" in task_errors(output)[(1, 0)]


def test_halo_wait_times_out(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "halo_timeout.yml", output, 3, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "timed out after 1 s waiting for halo rows of step 0" in task_errors(output)[(2, 0)]
    with h5py.File(output, "r") as file:
        assert milestones(file)[1][-1] == "Cancelled"


@pytest.mark.parametrize("ranks", [1, 2])
def test_value_never_published_fails_the_wait_at_once(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "never_published.yml", output, ranks, timeout=60)
    assert result.returncode == 1, result.stderr
    error = task_errors(output)[(0, 0)]
    assert "rank 1 (side) cannot give 'answer'" in error
    assert "without publishing 'answer'" in error
