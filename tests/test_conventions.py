"""Command-line conventions: --version, --help with examples, the script's JSON Schema,
`distx examples`, and output cut short by a pipe."""

from __future__ import annotations

import subprocess
import sys

import h5py
import jsonschema
import numpy as np
import pytest
import yaml
from conftest import BAD, JOBS, SCRIPTS, distx

from distx import __version__
from distx.check.script_schema import script_schema
from distx.cli import main


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = script_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"distx {__version__}"


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "examples:" in shown and "--progress live" in shown and "distx schema" in shown


@pytest.mark.parametrize("script", sorted(JOBS.glob("*.yml")) + sorted(SCRIPTS.glob("*.yml")),
                         ids=lambda path: path.name)
def test_every_shipped_script_validates_against_the_schema(validator, script):
    errors = [error.message for error in validator.iter_errors(yaml.safe_load(script.read_text()))]
    assert errors == []


@pytest.mark.parametrize("name", ["unknown_task", "unknown_config_key", "unknown_top_key",
                                  "wrong_type", "missing_config_key", "bad_partition",
                                  "bad_reduce", "bad_distribution"])
def test_the_schema_marks_what_validation_refuses(validator, name):
    script = yaml.safe_load((BAD / f"{name}.yml").read_text())
    assert list(validator.iter_errors(script)), name


def test_the_schema_accepts_references_where_validation_does(validator):
    script = {"Name": "x", "Sequence": [
        {"Task": "Run.Delay", "Config": {"Time": "@[wait:2]"}},
        {"Task": "Run.Message", "Config": {"Message": "hi", "Severity": "warning"}}]}
    assert list(validator.iter_errors(script)) == []
    script["Sequence"][0]["Config"]["Time"] = "soon"
    assert list(validator.iter_errors(script))


def test_schema_command_prints_it(capsys):
    import json

    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == script_schema()
    assert "Run.Sweep" in printed["$defs"]["task"]["properties"]["Task"]["enum"]


def test_examples_are_copied_and_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    assert main(["examples", str(folder)]) == 0
    assert (folder / "jobs" / "pi.yml").is_file()
    assert (folder / "kernels" / "montecarlo.py").is_file()
    assert sorted(path.name for path in (folder / "jobs").glob("*.yml")) == \
        sorted(path.name for path in JOBS.glob("*.yml"))
    # In a process of its own: importing the copied kernels here would take their module
    # names (montecarlo, ...) from the repository's kernels for every later test.
    validated = distx("validate", folder / "jobs" / "pi.yml", "-n", "4", timeout=120)
    assert validated.returncode == 0, validated.stderr
    assert main(["examples", str(folder)]) == 2      # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_export_into_a_closed_pipe_ends_quietly(tmp_path):
    output = tmp_path / "out.h5"
    assert distx(SCRIPTS / "flaky.yml", "--output", output, "--set",
                 f"marker={tmp_path}").returncode == 1
    with h5py.File(output, "r+") as file:   # more rows than a pipe buffers
        attempts = file["attempts"]
        rows = attempts[()]
        attempts.resize((len(rows) * 4000,))
        attempts[...] = np.tile(rows, 4000)
    command = f"'{sys.executable}' -m distx export '{output}' --csv - --table attempts | head -1"
    piped = subprocess.run(["/bin/bash", "-o", "pipefail", "-c", command],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and piped.stdout.startswith("run,id,part")
