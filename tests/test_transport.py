"""Transport behaviour that only shows with real MPI ranks."""

from __future__ import annotations

import subprocess
import sys

from conftest import TESTS, mpiexec


def test_message_from_a_faster_rank_before_start_is_kept_not_fatal():
    program = TESTS / "programs" / "start_order.py"
    result = subprocess.run([*mpiexec(), "-n", "3", sys.executable, str(program)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["verdict", "MILESTONE", "1", "Init"]


def test_small_arrays_travel_in_the_header_and_large_ones_after_it():
    program = TESTS / "programs" / "mixed_arrays.py"
    result = subprocess.run([*mpiexec(), "-n", "2", sys.executable, str(program)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["equal"] * 4


def test_one_body_for_many_ranks_is_pickled_once():
    program = TESTS / "programs" / "send_to_each.py"
    result = subprocess.run([*mpiexec(), "-n", "3", sys.executable, str(program)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["equal", "1"]


def test_a_rank_ends_with_its_exit_code_when_mpi_abort_never_returns():
    program = TESTS / "programs" / "abort_hangs.py"
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 7, result.stderr
