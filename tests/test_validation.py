"""Bad input: every file in tests/bad/ is refused with one clear message, exit code 2.

Each case states in its header what the message must say (`# expect:`), the YAML line it
must name (`# line:`) and, if it matters, the world size (`# ranks:`). A case about the
results file names it (`# output:`, a file in tests/bad/data) and the flags of the run
(`# flags:`); the message must then name that file, which must not change. A case about a
run option gives only `# flags:`. A case about `distx merge` lists its inputs (`# merge:`,
`self` being a results file of the case's own script), the output if it is not a new file
(`# merge_output:`) and the file the message must name (`# names:`); no input changes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
from conftest import BAD, JOBS, SCRIPTS, distx, run_script

from distx.cli import main

CASES = sorted(BAD.glob("*.yml"))


def expectations(case: Path) -> dict[str, str]:
    return dict(re.findall(r"^# (\w+): (.*)$", case.read_text(), re.MULTILINE))


def refused(command: list[str], capsys) -> str:
    """Run the command in-process; it must exit 2 with one line; return that line."""
    assert main(command) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0, message
    return message


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_bad_script_is_refused_by_validate_and_run(case, tmp_path, capsys):
    expected = expectations(case)
    if "merge" in expected:
        return check_merge_case(case, expected, tmp_path, capsys)
    if "output" in expected:
        return check_results_file_case(case, expected, tmp_path, capsys)
    if "flags" in expected:
        return check_run_flags_case(case, expected, tmp_path, capsys)
    ranks = expected.get("ranks", "1")
    output = tmp_path / "out.h5"
    for command in (["validate", str(case), "-n", ranks], ["run", str(case), "-o", str(output)]):
        if command[0] == "run" and ranks != "1":
            continue  # the rank checks of run need that many processes: see the MPI test below
        message = refused(command, capsys)
        assert message.startswith(f"distx: error: {case}")
        assert expected["expect"] in message
        if "line" in expected:
            assert f"{case}, line {expected['line']}" in message
    assert not output.exists()


def check_results_file_case(case: Path, expected: dict[str, str], tmp_path: Path,
                            capsys) -> None:
    output = tmp_path / Path(expected["output"]).name
    shutil.copyfile(case.parent / expected["output"], output)
    before = output.read_bytes()
    message = refused(["run", str(case), "-o", str(output), *expected.get("flags", "").split()],
                      capsys)
    assert message.startswith(f"distx: error: {output}: {expected['expect']}")
    assert output.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [output]


def check_run_flags_case(case: Path, expected: dict[str, str], tmp_path: Path,
                         capsys) -> None:
    message = refused(["run", str(case), "-o", str(tmp_path / "out.h5"),
                       *expected["flags"].split()], capsys)
    assert message.startswith("distx: error: ") and expected["expect"] in message
    assert not any(tmp_path.iterdir())


def check_merge_case(case: Path, expected: dict[str, str], tmp_path: Path, capsys) -> None:
    own = tmp_path / "self.h5"
    assert main(["run", str(case), "-o", str(own)]) == 0
    capsys.readouterr()

    def path(name: str) -> Path:
        return own if name == "self" else case.parent / name

    inputs = [path(name) for name in expected["merge"].split()]
    output = path(expected["merge_output"]) if "merge_output" in expected \
        else tmp_path / "merged.h5"
    before = {name: name.read_bytes() for name in inputs}
    message = refused(["merge", *map(str, inputs), "-o", str(output)], capsys)
    assert message.startswith(f"distx: error: {path(expected['names'])}: ")
    assert expected["expect"] in message
    assert {name: name.read_bytes() for name in inputs} == before
    assert sorted(tmp_path.iterdir()) == [own]


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


def test_validate_accepts_the_shipped_jobs(capsys):
    for job in JOBS.glob("*.yml"):
        assert main(["validate", str(job), "-n", "4"]) == 0, capsys.readouterr().err
        assert ": OK (" in capsys.readouterr().out


def test_error_has_no_traceback_unless_debug(tmp_path):
    case = BAD / "unknown_task.yml"
    plain = distx("run", case)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().count("\n") == 0
    debug = distx("run", case, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("ranks", [2, 4])
def test_bad_input_under_mpiexec_leaves_existing_results_untouched(tmp_path, ranks):
    output = tmp_path / "out.h5"
    assert run_script(SCRIPTS / "coordination.yml", output, 2).returncode == 0
    before = hashlib.sha256(output.read_bytes()).hexdigest()
    for case in (BAD / "rank_out_of_range.yml", BAD / "kernel_wrong_signature.yml",
                 BAD / "data_wrong_dtype.yml"):
        result = run_script(case, output, ranks, "--overwrite")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("distx: error:") == 1 and "Traceback" not in result.stderr
    assert hashlib.sha256(output.read_bytes()).hexdigest() == before


def test_existing_results_file_is_not_overwritten_without_flag(tmp_path):
    output = tmp_path / "out.h5"
    assert run_script(SCRIPTS / "coordination.yml", output, 1).returncode == 0
    before = output.read_bytes()
    again = run_script(SCRIPTS / "coordination.yml", output, 1)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--overwrite" in again.stderr
    assert output.read_bytes() == before


def test_show_refuses_a_file_that_is_not_a_results_file(tmp_path):
    result = distx("show", BAD / "data" / "good.h5")
    assert result.returncode == 2 and "not a distx results file" in result.stderr
    result = distx("show", BAD / "data" / "not_hdf5.h5")
    assert result.returncode == 2 and "not a readable HDF5 file" in result.stderr
