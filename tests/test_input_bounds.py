"""Hostile input is refused within fixed bounds, with one line and exit code 2.

The corpus in tests/bad/ holds the small cases; here are the ones too large to keep in the
repository (generated into a temporary folder) and property tests over random input.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time

import h5py
import pytest
from conftest import BAD, JOBS, run_script, text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distx.check.checks import check_script
from distx.cli import main
from distx.errors import TaskFailed, UserError
from distx.script import evaluate as evaluate_module
from distx.script import source
from distx.script.evaluate import evaluate
from distx.script.model import parse_script
from distx.script.source import Source


def refused_quickly(path, capsys, expect: str) -> str:
    started = time.monotonic()
    assert main(["validate", str(path)]) == 2
    assert time.monotonic() - started < 10
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and expect in message, message
    return message


def test_a_50_mb_script_is_refused_before_it_is_parsed(tmp_path, capsys):
    script = tmp_path / "big.yml"
    script.write_text("Name: big\nParameters:\n"
                      + "".join(f"  key{i}: {i}\n" for i in range(3_000_000)))
    assert script.stat().st_size > 50_000_000
    refused_quickly(script, capsys, f"larger than {source.MAX_SCRIPT_BYTES:,} bytes")


def test_a_1200_deep_block_mapping_is_refused(tmp_path, capsys):
    script = tmp_path / "deep.yml"
    script.write_text("Name: deep\nParameters:\n"
                      + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1200)))
    message = refused_quickly(script, capsys, f"more than {source.MAX_DEPTH} deep")
    assert ", line " in message


def test_nesting_up_to_the_limit_is_accepted():
    depth = source.MAX_DEPTH - 2
    document = Source("ok.yml", "Name: ok\nParameters:\n  a: " + "[" * depth + "]" * depth)
    assert document.data["Name"] == "ok"


def test_aliases_within_the_bound_are_expanded():
    document = Source("ok.yml", "a: &a [1, 2]\nb: [*a, *a]\n")
    assert document.data["b"] == [[1, 2], [1, 2]]


def test_a_plain_date_is_text():
    assert Source("ok.yml", "day: 2020-01-01\n").data == {"day": "2020-01-01"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_load_or_raise_user_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("random") / "script.yml"
    path.write_bytes(data)
    with contextlib.suppress(UserError):
        Source.read(path)


YAML_PIECES = st.sampled_from(["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "\n", "  ", "!!",
                               "python/name:os.system", "<<", "!!int ", "!!timestamp ",
                               "2020-13-45", "x", "1", ", ", "'", '"', "? ", "%YAML 1.1\n",
                               "---\n", "!t ", ".nan", "0x1F", "~"])


@settings(max_examples=500, deadline=None)
@given(st.lists(YAML_PIECES, max_size=40).map("".join))
def test_random_yaml_like_text_loads_or_raises_user_error(text):
    try:
        Source("random.yml", text)
    except UserError as error:
        assert "\n" not in str(error)


def test_set_values_and_defaults_never_construct_objects():
    assert source.read_scalar("!!python/name:os.system") == "!!python/name:os.system"
    assert source.read_scalar("2020-01-01") == "2020-01-01"
    assert source.read_scalar("3") == 3 and source.read_scalar("null") is None


@pytest.mark.parametrize("arguments, expect", [
    (["run", "JOB", "--timeout", "-5"], "argument --timeout: -5 is not a number of seconds"),
    (["run", "JOB", "--timeout", "0"], "argument --timeout: 0 is not a number of seconds"),
    (["run", "JOB", "--timeout", "nan"], "argument --timeout: nan is not a number of seconds"),
    (["run", "JOB", "--timeout", "1e10"], "argument --timeout: 1e10 is not a number"),
    (["run", "JOB", "--grace", "inf"], "argument --grace: inf is not a number of seconds"),
    (["run", "JOB", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["validate", "JOB", "-n", "1000000000"], "1000000000 ranks: give 1 to 100,000"),
    (["validate", "JOB", "-n", "0"], "0 ranks: give 1 to 100,000"),
    (["show"], "the following arguments are required: results"),
])
def test_command_line_errors_are_one_line(arguments, expect, tmp_path, capsys):
    job = str(JOBS / "pi.yml")
    started = time.monotonic()
    assert main([job if item == "JOB" else item for item in arguments]) == 2
    assert time.monotonic() - started < 10
    message = capsys.readouterr().err.strip()
    assert message.startswith("distx: error: ") and "\n" not in message, message
    assert expect in message


def test_validate_plans_the_largest_world_it_accepts(capsys):
    assert main(["validate", str(JOBS / "pi.yml"), "-n", "100000"]) == 0
    assert ": OK (" in capsys.readouterr().out


@pytest.mark.parametrize("expression, expect", [
    ("((10**10000)**10000)**10000", "more than 4,096 bits"),
    ("'a' * 10**10 * 10**10", "more than 1,000,000 characters"),
    ("10**10 * 'a'", "more than 1,000,000 characters"),
    ("(2**4000) * (2**4000)", "more than 4,096 bits"),
    ("9**9**9", "more than 4,096 bits"),
    ("(-1) ** 0.5", "complex"),
    ("2.0 ** 100000", "cannot evaluate"),
    ("-" * 5000 + "1", "nests too deeply"),
    ("+".join(["1"] * 4000), "nests too deeply"),
    ("1" * 20_000, "longer than 10,000 characters"),
    ("round(5, -10**7)", "round() to -10000000 digits"),
])
def test_evaluate_refuses_what_would_exceed_its_bounds_at_once(expression, expect):
    started = time.monotonic()
    with pytest.raises(TaskFailed, match=re.escape(expect)):
        evaluate(expression, {})
    assert time.monotonic() - started < 1


def test_evaluate_computes_up_to_its_bounds():
    assert evaluate("2 ** 4095", {}) == 2 ** 4095
    assert evaluate("'ab' * 500000", {}) == "ab" * 500_000
    assert evaluate("10 ** -400", {}) == 0.0


LEAVES = st.one_of(st.integers(-(10**30), 10**30), st.sampled_from(
    ["10**4000", "2**4095", "'ab'", "'x' * 1000", "1.5e300", "0.5", "0", "-1", "true",
     "-10**7", "10**7"]))
OPERATORS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])


FUNCTION_NAMES = st.sampled_from(["round", "max", "min", "abs", "int", "float", "floor",
                                  "sqrt", "exp", "log"])


def expressions():
    def grow(inner):
        return st.one_of(
            st.tuples(inner, OPERATORS, inner).map(lambda p: f"({p[0]}) {p[1]} ({p[2]})"),
            st.tuples(FUNCTION_NAMES, inner, inner).map(lambda p: f"{p[0]}({p[1]}, {p[2]})"),
            st.tuples(FUNCTION_NAMES, inner).map(lambda p: f"{p[0]}({p[1]})"))
    return st.recursive(LEAVES.map(str), grow, max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(expressions())
def test_evaluate_never_exceeds_its_bounds(expression):
    started = time.monotonic()
    try:
        value = evaluate(expression, {})
    except TaskFailed:
        value = None
    assert time.monotonic() - started < 1, expression
    if isinstance(value, int):
        assert value.bit_length() <= evaluate_module.MAX_INT_BITS
    if isinstance(value, str):
        assert len(value) <= evaluate_module.MAX_LENGTH


def test_evaluate_of_a_published_value_fails_the_task_with_the_bound(tmp_path):
    script = tmp_path / "bomb.yml"
    script.write_text("Name: bomb\nSequence:\n"
                      "  - Task: Run.Publish\n    Config: {n: 100000}\n"
                      "  - Task: Run.Evaluate\n    Config: {Key: x, Expression: \"n ** n ** n\"}\n")
    output = tmp_path / "bomb.h5"
    started = time.monotonic()
    result = run_script(script, output, None, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 60
    with h5py.File(output, "r") as file:
        errors = [text(row["error"]) for row in file["tasks"][()] if text(row["error"])]
    assert any("would be an integer of more than 4,096 bits" in error for error in errors)


# VmHWM is this process's own peak (ru_maxrss would include the forking parent's memory).
MEASURE = """\
import re, sys
from distx.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print(code, int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
"""


@pytest.mark.parametrize("case, ranks", [
    ("grid_huge_ranges.yml", "1"), ("ranks_beyond_any_world.yml", "4"),
    ("data_shape_too_large.yml", "1"), ("yaml_alias_bomb.yml", "1"),
])
def test_validation_refuses_without_allocating(case, ranks):
    """Refused from counts and shapes alone: the process stays small (MiB of peak RSS)."""
    result = subprocess.run([sys.executable, "-c", MEASURE, "validate", str(BAD / case),
                             "-n", ranks], capture_output=True, text=True, timeout=120)
    code, peak_mib = map(int, result.stdout.split())
    assert code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert peak_mib < 300, peak_mib


NUMBERS = st.one_of(st.integers(-2**66, 2**66), st.floats(),
                    st.sampled_from([0, 1, -1, 255, 256, 2**31, 2**63]))
ANY_VALUE = st.one_of(NUMBERS, st.text(max_size=6), st.booleans(), st.none(),
                      st.lists(NUMBERS, max_size=3))
GENERATE = st.fixed_dictionaries(
    {"Distribution": st.sampled_from(["uniform", "normal", "integers"]),
     "Shape": st.lists(st.integers(1, 2**62), min_size=1, max_size=33)},
    optional={"DType": st.sampled_from(["int8", "uint8", "int64", "float32", "bool", "S3",
                                        "(2,)f8", "O", "M8", "c16"]),
              "Low": NUMBERS, "High": NUMBERS, "Mean": NUMBERS, "Std": NUMBERS,
              "Seed": ANY_VALUE})
KEYFIELD = st.one_of(
    st.fixed_dictionaries({"stop": NUMBERS}, optional={"start": NUMBERS, "step": NUMBERS}),
    st.lists(st.one_of(NUMBERS, st.text(max_size=3), st.booleans()), min_size=1, max_size=4))
CAPTURE_KEY = st.one_of(
    st.text(max_size=3), st.tuples(st.integers(-2, 5), st.text(max_size=3)).map(list),
    st.tuples(st.integers(-2, 5), st.text(max_size=3),
              st.sampled_from(["int", "float", "text", "x"])).map(list))
TASK = st.one_of(
    st.fixed_dictionaries({"Task": st.just("Run.Sweep"), "Config": st.fixed_dictionaries(
        {"Kernel": st.just("constant.kernel")},
        optional={"Outputs": st.lists(st.text(max_size=4), max_size=3), "Inputs": st.just(["X"]),
                  "Reduce": st.sampled_from(["sum", "mean"]), "Timeout": ANY_VALUE})}),
    st.fixed_dictionaries({"Task": st.just("Run.PublishFromPreviousTaskLog"),
                           "Config": st.fixed_dictionaries({
                               "Pattern": st.text(max_size=12),
                               "Keys": st.lists(CAPTURE_KEY, max_size=3)})}),
    st.fixed_dictionaries({"Task": st.just("Run.Evaluate"), "Config": st.fixed_dictionaries({
        "Key": st.just("k"), "Expression": st.one_of(ANY_VALUE, st.text(
            alphabet="0123456789+-*/%()<>=! andortx'.,[]{}~^&|", max_size=20))})}))
SCRIPTS_WITH_ODD_VALUES = st.fixed_dictionaries({
    "Name": st.just("odd"), "Kernels": st.just("kernels"),
    "Data": st.fixed_dictionaries({"X": st.fixed_dictionaries(
        {"Generate": GENERATE, "Partition": st.sampled_from(["rows", "replicate"])})}),
    "Experiments": st.fixed_dictionaries(
        {"Keyfields": st.dictionaries(st.text(max_size=4), KEYFIELD, min_size=1, max_size=2)},
        optional={"Folds": ANY_VALUE, "Retries": ANY_VALUE}),
    "Parameters": st.fixed_dictionaries({"x": ANY_VALUE}),
    "Sequence": st.lists(TASK, max_size=2)})


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(SCRIPTS_WITH_ODD_VALUES, st.integers(1, 3))
def test_validation_of_odd_values_raises_only_one_line_user_errors(document, ranks):
    """Scripts with odd values everywhere validation looks: accepted, or one UserError line
    (never another exception: that would be a traceback, exit 1)."""
    import yaml

    try:
        check_script(parse_script(Source(str(BAD / "odd.yml"), yaml.safe_dump(document))),
                     ranks)
    except UserError as error:
        assert "\n" not in str(error)
