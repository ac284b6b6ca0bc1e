"""Roles coordinating through milestones and values, run by real mpiexec, read from HDF5."""

from __future__ import annotations

import h5py
import pytest
from conftest import SCRIPTS, distx, log_lines, milestones, run_script, text, values

ORDER = ["Init", "PreRun", "Run"]


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_every_coordination_task(tmp_path, ranks):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "coordination.yml", output, ranks)
    assert result.returncode == 0, result.stderr
    size = max(ranks, 2)  # one process plays coordinator and one virtual 'side' rank
    side = list(range(1, size))
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Finished"
        assert int(file.attrs["world_size"]) == size
        reached = milestones(file)
        assert reached[0] == [*ORDER, "Published", "PostRun", "Finished"]
        for rank in side:
            assert reached[rank] == [*ORDER, "Ready", "PostRun", "Finished"]
        found = values(file)
        run_id = text(file.attrs["run_id"])
        assert found[(0, "token")] == [f"t{rank}" for rank in side]
        assert found[(0, "rank_sum")] == sum(10 * rank for rank in side)
        assert found[(0, "rank_max")] == 10 * side[-1]
        assert found[(0, "check")] == found[(0, "rank_sum")] + 1
        assert found[(0, "echoed_sum")] == found[(0, "rank_sum")]
        assert found[(0, "echoed_run")] == run_id
        for rank in side:
            assert found[(rank, "greeting")] == "hello:world"
            assert found[(rank, "token")] == f"t{rank}"
            kept = file[f"files/run0/rank{rank}/out/info-{rank}.txt"]
            assert bytes(kept[()]).decode().strip() == f"token=t{rank} greeting=hello:world"
        message = f"sum={found[(0, 'rank_sum')]} missing=a:b:c size={size} role=coordinator"
        assert ("WARNING", message) in log_lines(file, 0)
        tasks = file["tasks"][()]
        assert len(tasks) == 10 + 7 * len(side)
        assert {text(status) for status in tasks["status"]} == {"done"}
    assert message in result.stderr


def test_plain_python_without_mpiexec_plays_every_role(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "coordination.yml", output, None)
    assert result.returncode == 0, result.stderr
    with h5py.File(output, "r") as file:
        assert milestones(file)[1][-1] == "Finished"
        assert values(file)[(0, "token")] == ["t1"]


@pytest.mark.parametrize("ranks", [1, 4])
def test_peer_error_wakes_waiter_and_cancels_the_rest(tmp_path, ranks):
    output = tmp_path / "out.h5"
    # Timeouts are 600 s: finishing inside the subprocess limit proves nobody waited for them.
    result = run_script(SCRIPTS / "failure.yml", output, ranks, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    with h5py.File(output, "r") as file:
        assert text(file.attrs["state"]) == "Errored"
        assert int(file.attrs["exit_code"]) == 1
        reached = milestones(file)
        assert reached[1][-1] == "Errored" and "Ready" not in reached[1]
        assert reached[0][-1] == "Errored"
        for rank in range(2, file.attrs["world_size"]):
            assert reached[rank][-1] == "Cancelled"
        tasks = {(int(row["rank"]), int(row["index"])): row for row in file["tasks"][()]}
        side_error = text(tasks[(1, 0)]["error"])
        assert "exited with code 3" in side_error and "preparing" in side_error
        waiter_error = text(tasks[(0, 0)]["error"])
        assert "rank 1 (side) errored without reaching milestone Ready" in waiter_error
        assert "task 0 Run.CliExecute failed" in waiter_error
        details = {int(row["rank"]): text(row["detail"]) for row in file["milestones"][()]
                   if text(row["name"]) == "Errored"}
        assert "exited with code 3" in details[1]


def test_timeouts_name_what_was_awaited(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "timeouts.yml", output, 2, "--set", "value_timeout=1",
                        timeout=120)
    assert result.returncode == 1
    assert "timed out after 1 s waiting for value 'late_value' from rank 1 (side)" in result.stderr
    with h5py.File(output, "r") as file:
        assert milestones(file)[1][-1] == "Cancelled"


def test_milestone_timeout_uses_script_default_and_command_line_override(tmp_path):
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "timeouts.yml", output, 2, "--timeout", "2", timeout=120)
    assert result.returncode == 1
    assert "timed out after 2 s waiting for milestone Late from rank 1 (side)" in result.stderr
    with h5py.File(output, "r") as file:
        assert values(file)[(0, "late_value")] == [1]


@pytest.mark.parametrize("override", [None, "payload=a b;c"])
def test_expanded_values_are_shell_quoted(tmp_path, override):
    output = tmp_path / "out.h5"
    extra = ["--set", override] if override else []
    result = run_script(SCRIPTS / "quoting.yml", output, 1, *extra)
    assert result.returncode == 0, result.stderr
    payload = override.split("=", 1)[1] if override else \
        "$(echo INJECTED) ; echo INJECTED2 `echo INJECTED3`"
    with h5py.File(output, "r") as file:
        assert values(file)[(0, "printed")] == f"{payload}|quoting|"
        assert not any(line.startswith("INJECTED") for _, line in log_lines(file))


def test_show_summarises_a_run(tmp_path):
    output = tmp_path / "out.h5"
    assert run_script(SCRIPTS / "coordination.yml", output, 2).returncode == 0
    shown = distx("show", output)
    assert shown.returncode == 0
    assert "state Finished, exit code 0" in shown.stdout
    assert "rank 1 (side): Init PreRun Run Ready PostRun Finished" in shown.stdout
    assert "run0/rank1/out/info-1.txt" in shown.stdout
