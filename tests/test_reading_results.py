"""What a person reads after a run: `show`, `status`, progress lines, kernel output, trace.

One real run of tests/scripts/showcase.yml on 4 ranks (`--progress live`) and a resume of it
(`--progress lines`) make the file every test here reads.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import SCRIPTS, log_lines, mpiexec, run_script, text

from distx.engine.output import OutputCapture
from distx.engine.progress import Progress, clock
from distx.results.show import ShowOptions, rank_ranges, status, summary


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    """(results file, stderr of the first run, stderr of the resumed run)."""
    output = tmp_path_factory.mktemp("showcase") / "showcase.h5"
    # bytes, not text: text mode would turn the live line's \r into \n
    first = subprocess.run([*mpiexec(), "-n", "4", sys.executable, "-m", "distx",
                            SCRIPTS / "showcase.yml", "--output", output, "--progress", "live"],
                           capture_output=True, timeout=240, stdin=subprocess.DEVNULL)
    assert first.returncode == 1, first.stderr  # seed 3 and rank 3 fail on purpose
    second = run_script(SCRIPTS / "showcase.yml", output, 4, "--resume", "--progress", "lines")
    assert second.returncode == 1, second.stderr
    return output, first.stderr.decode(), second.stderr


# ----- show -----------------------------------------------------------------------------------
def test_show_collapses_identical_milestone_lines_per_run(showcase):
    output, _, _ = showcase
    shown = summary([output])
    assert shown.count("ranks 1-2 (workers): Init PreRun Run Warm PostRun Finished") == 2
    assert shown.count("rank 3 (failing): Init PreRun Run Errored") == 2
    assert "run 0 (" in shown and "run 1 (" in shown
    assert shown.index("run 0 (") < shown.index("run 1 (")


def test_a_failed_rank_keeps_its_whole_cause(showcase):
    output, first, _ = showcase
    with h5py.File(output, "r", locking=False) as file:
        details = [text(row["detail"]) for row in file["milestones"][()]
                   if text(row["name"]) == "Errored"]
    assert details and all("its second line says why" in detail for detail in details)
    assert all("Traceback" in detail for detail in details)
    assert "its second line says why" in summary([output])
    # the terminal gets the first line only
    assert "its second line says why" not in first


def test_show_gives_output_statistics_grouped_by_keyfields(showcase):
    output, _, _ = showcase
    with h5py.File(output, "r", locking=False) as file:
        rows = file["experiments"][()]
    done = rows[(rows["status"] == b"done") & (rows["scale"] == 2)]
    shown = summary([output], ShowOptions(by=["scale"])).splitlines()
    header = next(line.split() for line in shown if "output" in line and "count" in line)
    assert header == ["scale", "output", "count", "mean", "std", "min", "max"]
    line = next(line.split() for line in shown if line.split()[:2] == ["2", "value"])
    assert int(line[2]) == len(done) == 5
    assert float(line[3]) == pytest.approx(done["value"].mean(), rel=1e-5)
    assert float(line[4]) == pytest.approx(done["value"].std(ddof=1), rel=1e-5)
    assert (float(line[5]), float(line[6])) == (done["value"].min(), done["value"].max())
    two = summary([output], ShowOptions(by=["seed", "scale"]))
    assert re.search(r"^\s+5\s+2\s+other\s+1\s+7\s+0\s+7\s+7$", two, re.MULTILINE)


def test_show_lists_the_best_rows(showcase):
    output, _, _ = showcase
    shown = summary([output], ShowOptions(sort="value", descending=True, top=3)).splitlines()
    start = next(i for i, line in enumerate(shown) if "3 highest by value:" in line)
    assert shown[start + 1].split() == ["value", "seed", "scale", "other", "status"]
    assert [line.split()[:3] for line in shown[start + 2:start + 5]] == [
        ["10", "5", "2"], ["8", "4", "2"], ["5", "5", "1"]]
    lowest = summary([output], ShowOptions(sort="value", top=1))
    assert "1 lowest by value:" in lowest


def test_show_groups_errors_by_message_with_their_keyfields(showcase):
    output, _, _ = showcase
    shown = summary([output])
    assert "errors: 2 experiment(s), 1 distinct" in shown
    line = next(line for line in shown.splitlines() if "raised ValueError: bad seed 3" in line)
    assert line.endswith("(2 experiment(s): seed=3 scale=1; seed=3 scale=2)")
    assert "second line of the cause" in shown
    with h5py.File(output, "r", locking=False) as file:
        ids = [text(value) for value in file["experiments"]["id"]]
    assert not any(experiment_id in shown for experiment_id in ids)


def test_show_refuses_an_unknown_column(showcase):
    from distx.errors import UserError

    output, _, _ = showcase
    with pytest.raises(UserError, match="--by nope: no such column.*seed, scale"):
        summary([output], ShowOptions(by=["nope"]))
    with pytest.raises(UserError, match="at most 2"):
        summary([output], ShowOptions(by=["seed", "scale", "seed"]))


def test_one_path_is_one_file(showcase):
    output, _, _ = showcase
    assert summary(str(output)) == summary([output])
    assert status(output) == status([str(output)])


def test_rank_ranges():
    assert rank_ranges([7, 1, 2, 3, 5, 8]) == "1-3,5,7-8"
    assert rank_ranges([4]) == "4"


# ----- several files --------------------------------------------------------------------------
def test_show_and_status_report_the_union_of_several_files(showcase, tmp_path):
    output, _, _ = showcase
    other = tmp_path / "shard-b.h5"
    shutil.copyfile(output, other)
    with h5py.File(other, "r+") as file:   # another shard: other experiments
        table = file["experiments"]
        rows = table[()]
        rows["id"] = [b"b" + value[1:] for value in rows["id"]]
        table[...] = rows
    shutil.copyfile(output, tmp_path / "shard-a.h5")
    pattern = str(tmp_path / "shard-*.h5")
    shown = status([pattern])
    assert "experiments in 2 files: 20 done, 0 running, 0 created, 4 error of 24" in shown
    assert shown.count("'showcase' run") == 2
    assert "experiments in 2 files: 20 done, 4 error of 24" in summary([pattern])
    # the same file twice counts once
    assert "experiments in 2 files: 10 done, 0 running, 0 created, 2 error of 12" in \
        status([output, tmp_path / "shard-a.h5"])


def test_status_says_serving_for_ranks_done_with_their_sequence_but_in_a_sweep(
        showcase, tmp_path):
    output, _, _ = showcase
    assert "ranks: 0-2 Finished, 3 Errored" in status([output])
    live = tmp_path / "live.h5"
    shutil.copyfile(output, live)
    with h5py.File(live, "r+") as file:   # as while the sweep still runs
        file.attrs["state"] = "Running"
        table = file["experiments"]
        rows = table[()]
        rows["status"][:2], rows["rank"][:2] = b"running", [1, 2]
        table[...] = rows
    shown = status([live])
    assert "ranks: 0 Finished, 1-2 serving, 3 Errored" in shown


# ----- progress -------------------------------------------------------------------------------
BATCH_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] sweep: \d+ done, \d+ error of "
                        r"\d+ \(\d+\.\d%\) in \d+:\d\d:\d\d, [\d,]+/s, ETA (\d+:\d\d:\d\d|-)$")


def test_progress_live_under_mpiexec_and_batch_lines(showcase):
    _, live, lines = showcase
    assert "\rsweep: " in live and "(100.0%)" in live
    batch = [line for line in lines.splitlines() if "sweep:" in line and "done," in line]
    assert batch and all(BATCH_LINE.match(line) for line in batch), batch
    assert "\r" not in lines and "ETA inf" not in live + lines


def test_progress_eta_is_a_dash_until_a_rate_is_known():
    stream = io.StringIO()
    progress = Progress(1000, "lines", stream)
    progress.update(1000, 0, force=True)
    assert stream.getvalue().rstrip().endswith("ETA -")
    progress.began -= 10
    progress.update(500, 2, force=True)
    assert "498 done, 2 error of 1,000 (50.0%) in 0:00:10, 50/s, ETA 0:00:10" in \
        stream.getvalue()
    assert clock(3725) == "1:02:05" and clock(90061) == "25:01:01"
    quiet = io.StringIO()
    Progress(10, "off", quiet).finish(0, 0)
    assert quiet.getvalue() == ""


def test_a_line_echoed_during_a_live_progress_line_gets_a_line_of_its_own():
    from distx.engine.progress import break_live_line

    stream = io.StringIO()
    progress = Progress(10, "live", stream)
    progress.update(5, 0, force=True)
    break_live_line()        # what RankCore.echo does before its line
    stream.write("[rank 0 (coordinator)] INFO: hello\n")
    progress.update(0, 0, force=True)
    progress.finish(0, 0)
    lines = stream.getvalue().split("\n")
    assert lines[0].startswith("\rsweep: 5 done") and lines[1].startswith("[rank 0")
    assert lines[2].startswith("\rsweep: 10 done") and lines[-1] == ""


# ----- kernel output --------------------------------------------------------------------------
def test_kernel_output_reaches_the_log_and_the_terminal_with_its_rank(showcase):
    output, first, _ = showcase
    with h5py.File(output, "r", locking=False) as file:
        logs = file["logs"][()]
    printed = logs[logs["severity"] == b"OUTPUT"]
    numba_lines = {(int(row["rank"]), int(row["index"])) for row in printed
                   if text(row["message"]) == "numba says 10" and row["run"] == 0}
    assert numba_lines == {(1, 0), (2, 0)}
    sweep_lines = [row for row in printed if text(row["message"]).startswith("measuring seed")
                   and row["run"] == 0]
    assert len(sweep_lines) == 12                  # one per experiment of the first run
    assert {int(row["index"]) for row in sweep_lines} == {-1}
    assert {int(row["rank"]) for row in sweep_lines} <= {1, 2, 3}
    assert "[rank 1 (workers)] OUTPUT: numba says 10" in first
    assert all(line.startswith("[rank ") for line in first.splitlines()
               if "measuring seed" in line or "numba says" in line)
    with h5py.File(output, "r", locking=False) as file:
        assert ("OUTPUT", "numba says 10") in log_lines(file, 1)


def test_output_capture_takes_python_and_descriptor_writes(capsys):
    import os

    capture = OutputCapture(enabled=True)
    with capsys.disabled(), capture.capture() as printed:  # sys.stdout on fd 1, as in a run
        print("from python")
        print("to stderr", file=sys.stderr)
        os.write(1, b"from fd 1\n")
    assert printed == ["from python", "to stderr", "from fd 1"]
    with capture.capture() as again:
        pass
    assert again == []
    with OutputCapture(enabled=False).capture() as nothing:
        pass
    assert nothing == []


def test_output_capture_keeps_a_bounded_amount(capsys, monkeypatch):
    import os

    from distx.engine import output

    monkeypatch.setattr(output, "MAX_KEPT", 100)
    with capsys.disabled(), OutputCapture(enabled=True).capture() as printed:
        os.write(1, b"x" * 60 + b"\n" + b"y" * 100 + b"\n")
    assert printed == ["x" * 60, "y" * 39, "[62 more bytes of output not kept]"]


# ----- timeline and trace ---------------------------------------------------------------------
def read_trace(path) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as source:
        return json.load(source)["traceEvents"]


def test_trace_holds_every_task_milestone_and_attempt_of_the_run(showcase, tmp_path):
    from distx.cli import main

    output, _, _ = showcase
    trace = tmp_path / "trace.json"
    assert main(["timeline", str(output), "-o", str(tmp_path / "t.png"), "--trace",
                 str(trace), "--run", "0"]) == 0
    events = read_trace(trace)
    with h5py.File(output, "r", locking=False) as file:
        tasks = file["tasks"][()]
        milestones = file["milestones"][()]
        attempts = file["attempts"][()]
    tasks, milestones = tasks[tasks["run"] == 0], milestones[milestones["run"] == 0]
    attempts = attempts[attempts["run"] == 0]
    names = {event["pid"]: event["args"]["name"] for event in events
             if event["ph"] == "M" and event["name"] == "process_name"}
    assert names == {0: "rank 0 (coordinator)", 1: "rank 1 (workers)", 2: "rank 2 (workers)",
                     3: "rank 3 (failing)"}
    task_events = [event for event in events if event.get("cat") == "task"]
    assert sorted((event["pid"], event["name"]) for event in task_events) == sorted(
        (int(row["rank"]), text(row["task"])) for row in tasks)
    assert all(event["ph"] == "X" and event["dur"] >= 0 and event["ts"] >= 0
               for event in task_events)
    failed = next(event for event in task_events if event["pid"] == 3)
    assert "its second line says why" in failed["args"]["error"]
    instants = [event for event in events if event["ph"] == "i"]
    assert len(instants) == len(milestones)
    assert {event["name"] for event in instants if event["pid"] == 3} == {
        "Init", "PreRun", "Run", "Errored"}
    tried = [event for event in events if event.get("cat", "").startswith("attempt")]
    assert len(tried) == len(attempts) == 12
    assert {event["tid"] for event in tried} == {1}
    assert sum(event["args"]["status"] == "error" for event in tried) == 2
    assert any(event["name"] == "data distribution" for event in events)


def test_trace_of_100k_attempts(showcase, tmp_path):
    from distx.results.trace import write_trace

    output, _, _ = showcase
    big = tmp_path / "big.h5"
    shutil.copyfile(output, big)
    with h5py.File(big, "r+") as file:
        table = file["attempts"]
        rows = table[()]
        rows = rows[rows["run"] == 1]
        many = np.resize(rows, 100_000)
        table.resize((len(many),))
        table[...] = many
    trace = tmp_path / "big.json"
    count = write_trace(big, trace)
    events = read_trace(trace)
    assert count == len(events)
    assert sum(event.get("cat", "").startswith("attempt") for event in events) == 100_000


def test_timeline_names_an_unknown_run(showcase, tmp_path):
    from distx.errors import UserError
    from distx.results.timeline import draw

    output, _, _ = showcase
    with pytest.raises(UserError, match="no run 7.*0, 1"):
        draw(output, tmp_path / "t.png", 7)
    picture = draw(output, tmp_path / "t.png", 1)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stuck_sweep_kernel_is_reported_on_the_terminal_while_its_output_is_captured(
        tmp_path):
    """The watchdog's line comes while the batch's output is captured: it must not be."""
    result = run_script(SCRIPTS / "faulty_sweep.yml", tmp_path / "out.h5", 3, "--set",
                        "sleep_at=4", timeout=120)
    assert result.returncode == 1, result.stderr
    assert re.search(r"^\[rank \d \([^)]*\)\] ERROR: kernel \S+ on rank \d .*ran past its "
                     r"Timeout of 2 s", result.stderr, re.MULTILINE), result.stderr
