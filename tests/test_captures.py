"""Run.PublishFromFile / PublishFromPreviousTaskLog: linear-time matching, text captures
unless Keys asks for a type (real single-process runs, read back from the results file)."""

from __future__ import annotations

import time

import h5py
import pytest
from conftest import run_script, text, values

from distx.engine.tasks import Capture, capture_keys, compile_pattern
from distx.errors import TaskFailed

SCRIPT = """\
Name: captures
Sequence:
  - Task: Run.PublishFromFile
    Config:
      Path: line.txt
      Pattern: "version=(\\\\S+) mcc=(\\\\S+) build=(\\\\S+)"
      Keys: [version, mcc, build, [1, version_number, float], [2, mcc_number, int]]
  - Task: Run.PublishFromFile
    Config: {Path: evil.txt, Pattern: "^(a+)+$", Keys: [whole]}
"""


def test_captures_are_text_unless_typed_and_matching_is_linear(tmp_path):
    (tmp_path / "line.txt").write_text("version=1.10 mcc=001 build=1_000\n")
    (tmp_path / "evil.txt").write_text("a" * 40 + "b\n" + "a" * 100_000 + "!\n")
    script = tmp_path / "captures.yml"
    script.write_text(SCRIPT)
    output = tmp_path / "captures.h5"
    started = time.monotonic()
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60
    with h5py.File(output, "r") as file:
        published = values(file)
    assert published[(0, "version")] == "1.10"
    assert published[(0, "mcc")] == "001"
    assert published[(0, "build")] == "1_000"
    assert published[(0, "version_number")] == 1.1
    assert published[(0, "mcc_number")] == 1
    assert (0, "whole") not in published


def test_catastrophic_pattern_matches_in_linear_time():
    pattern = compile_pattern(r"^(a+)+$")
    started = time.monotonic()
    assert pattern.search("a" * 40 + "b") is None
    assert pattern.search("a" * 1_000_000 + "b") is None
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("capture, captured", [
    (Capture(1, "n", "int"), "1_000"), (Capture(1, "n", "int"), "١٢"),
    (Capture(1, "n", "int"), "9223372036854775808"), (Capture(1, "x", "float"), "nan"),
    (Capture(1, "x", "float"), "1e999"), (Capture(1, "x", "float"), " 1.5"),
])
def test_typed_capture_refuses_what_is_not_its_type(capture, captured):
    with pytest.raises(TaskFailed, match="captured"):
        capture.convert(captured)


def test_keys_forms():
    assert capture_keys(["a", [3, "b"], [2, "c", "int"]], 3) == [
        Capture(1, "a"), Capture(3, "b"), Capture(2, "c", "int")]
    with pytest.raises(ValueError, match="has 1 group"):
        capture_keys([[2, "b"]], 1)


def test_a_bad_capture_fails_the_task_with_a_clear_message(tmp_path):
    (tmp_path / "line.txt").write_text("count=many\n")
    script = tmp_path / "typed.yml"
    script.write_text("Name: typed\nSequence:\n  - Task: Run.PublishFromFile\n"
                      "    Config: {Path: line.txt, Pattern: 'count=(\\w+)', "
                      "Keys: [[1, count, int]]}\n")
    output = tmp_path / "typed.h5"
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    with h5py.File(output, "r") as file:
        errors = [text(row["error"]) for row in file["tasks"][()]]
    assert "'count' (group 1) captured 'many', not a 64-bit integer" in errors
