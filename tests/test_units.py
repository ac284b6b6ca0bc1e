"""Pure functions: expansion, evaluation, grids, rank specs, row blocks, reductions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distx.engine.data import row_blocks
from distx.engine.tasks import reduce_values
from distx.errors import TaskFailed
from distx.script.evaluate import evaluate
from distx.script.expand import expand, expand_text, referenced_names
from distx.script.grid import Grid, GridError, experiment_id, keyfield_values
from distx.script.roles import parse_ranks

BUILTINS = {"Rank": 3, "RunId": "r1"}


def test_expansion_keeps_type_of_whole_reference_and_formats_inside_text():
    values = {"n": 4, "x": 0.5, "arr": np.arange(3)}
    assert expand("@[n]", values, BUILTINS) == 4
    assert expand("@[arr]", values, BUILTINS) is values["arr"]
    assert expand("n=@[n] x=@[x] r=@{Rank}", values, BUILTINS) == "n=4 x=0.5 r=3"
    assert expand({"a": ["@[n]", {"b": "@{RunId}"}]}, values, BUILTINS) == \
        {"a": [4, {"b": "r1"}]}


def test_default_standing_alone_is_typed_and_in_text_is_verbatim():
    assert expand("@[pause:0.01]", {}, BUILTINS) == 0.01
    assert expand("@[n:3]", {}, BUILTINS) == 3
    assert expand("@[flag:true]", {}, BUILTINS) is True
    assert expand("@[name:abc]", {}, BUILTINS) == "abc"
    assert expand("id-@[n:007]", {}, BUILTINS) == "id-007"


def test_default_may_contain_colons_and_only_first_colon_splits():
    assert expand("@[url:http://host:80/x]", {}, BUILTINS) == "http://host:80/x"
    assert expand("@[url:http://host:80/x]", {"url": "set"}, BUILTINS) == "set"
    assert expand("[@[empty:]]", {}, BUILTINS) == "[]"


def test_undefined_value_and_unknown_builtin_fail_clearly():
    with pytest.raises(TaskFailed, match=r"@\[missing\] is not defined.*--set missing=VALUE"):
        expand("@[missing]", {}, BUILTINS)
    with pytest.raises(TaskFailed, match=r"unknown built-in @\{Nope\}"):
        expand("@{Nope}", {}, BUILTINS)


def test_expand_text_formats_every_reference_even_alone():
    assert expand_text("@[n]", {"n": 4}, BUILTINS) == "4"
    assert expand_text("echo @[v] @{Rank}", {"v": "; rm -rf ~"}, BUILTINS) == \
        "echo ; rm -rf ~ 3"


def test_referenced_names_ignore_defaults():
    assert referenced_names({"a": "@[x] @[y:1]", "b": ["@[z]"]}) == {"x", "z"}


@given(st.text(alphabet=st.characters(blacklist_characters="]"), max_size=30),
       st.text(max_size=30))
def test_any_default_text_round_trips(default, value):
    assert expand(f"<@[k:{default}]>", {}, {}) == f"<{default}>"
    assert expand(f"<@[k:{default}]>", {"k": value}, {}) == f"<{value}>"
    assert expand(f"@[k:{default}]", {"k": value}, {}) == value


@pytest.mark.parametrize("expression, expected", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("7 // 2 + 7 % 2", 4), ("2 ** 10", 1024),
    ("n / 4", 2.5), ("n > 3 and n < 20", True), ("not n == 10", False),
    ("1 < n <= 10", True), ("'big' if n > 5 else 'small'", "big"),
    ("max(1, n, 3) + abs(-2)", 12), ("round(sqrt(16) + pi, 2)", 7.14), ("true or x", True),
])
def test_safe_evaluator(expression, expected):
    assert evaluate(expression, {"n": 10}) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "n.__class__", "open('/etc/passwd')",
    "[x for x in range(3)]", "lambda: 1", "n[0]", "exec('1')", "2 ** 100000",
    "{1: 2}", "f'{n}'",
])
def test_safe_evaluator_refuses_everything_else(expression):
    with pytest.raises(TaskFailed):
        evaluate(expression, {"n": 10})


def test_evaluator_reports_bad_syntax_and_math_errors():
    with pytest.raises(TaskFailed, match="cannot parse"):
        evaluate("1 +", {})
    with pytest.raises(TaskFailed, match="division by zero"):
        evaluate("1 / 0", {})
    with pytest.raises(TaskFailed, match="unknown name 'q'"):
        evaluate("q + 1", {})


def test_keyfield_ranges_exclude_stop_and_reject_bad_ranges():
    assert keyfield_values("s", {"start": 0, "stop": 10, "step": 3}) == [0, 3, 6, 9]
    assert keyfield_values("s", {"stop": 3}) == [0, 1, 2]
    assert keyfield_values("x", {"start": 0.1, "stop": 0.4, "step": 0.1}) == [0.1, 0.2, 0.3]
    assert keyfield_values("x", {"start": 5, "stop": 0, "step": -2}) == [5, 3, 1]
    for bad, message in [({"start": 0, "stop": 5, "step": 0}, "step 0"),
                         ({"start": 5, "stop": 1}, "is empty"), ([], "empty list"),
                         ([1, 1], "same value twice"), ({"start": 0}, "stop required"),
                         ("text", "must be a list")]:
        with pytest.raises(GridError, match=message):
            keyfield_values("k", bad)


def keyfields_of(grid: Grid, index: int) -> dict:
    return {name: values[0] for name, values in grid.keyfield_columns([index]).items()}


def test_grid_is_the_cartesian_product_with_folds_and_stable_ids():
    grid = Grid({"a": [1, 2], "b": ["x", "y", "z"]}, folds=2)
    assert len(grid) == 12
    assert keyfields_of(grid, 0) == {"a": 1, "b": "x", "fold": 0}
    assert keyfields_of(grid, 11) == {"a": 2, "b": "z", "fold": 1}
    ids = grid.ids()
    assert len(set(ids)) == 12
    assert ids[5] == experiment_id({"fold": 1, "b": "z", "a": 1})
    assert grid.keyfield_columns(np.array([5, 0])) == {"a": [1, 1], "b": ["z", "x"],
                                                       "fold": [1, 0]}


@given(st.lists(st.integers(0, 2999), min_size=1, max_size=50))
def test_the_ids_of_a_few_experiments_of_a_large_grid_are_theirs(chosen):
    """A holder's slice formats only the values it needs, with the same ids (mixed types
    in one keyfield: each value keeps its JSON form)."""
    grid = Grid({"seed": list(range(1000)), "kind": [1, 2.5, "x"]})
    first = min(min(chosen), len(grid) - 120)
    for indices in (chosen, list(range(first, first + 120))):   # and a slice
        expected = [experiment_id(keyfields_of(grid, index)) for index in indices]
        assert grid.id_column(np.array(indices)).astype(str).tolist() == expected


@given(st.dictionaries(st.sampled_from("abcd"), st.lists(st.integers(-5, 5), min_size=1,
                                                         max_size=4, unique=True),
                       min_size=1, max_size=3),
       st.one_of(st.none(), st.integers(2, 3)))
def test_grid_covers_every_combination_once(keyfields, folds):
    grid = Grid(keyfields, folds)
    expected = int(np.prod([len(v) for v in keyfields.values()])) * (folds or 1)
    assert len(grid) == expected
    combos = [keyfields_of(grid, index) for index in range(expected)]
    assert len({tuple(sorted(c.items())) for c in combos}) == expected
    assert grid.ids() == [experiment_id(c) for c in combos]  # the fast ids are the same


def test_rank_specs():
    assert parse_ranks("1-", 5) == [1, 2, 3, 4]
    assert parse_ranks("1-3", None) == [1, 2, 3]
    assert parse_ranks("1,3, 5-6", None) == [1, 3, 5, 6]
    assert parse_ranks([2, "4-5"], None) == [2, 4, 5]
    assert parse_ranks(7, None) == [7]
    for bad in ("a-b", "3-1", "-2", ""):
        with pytest.raises(ValueError):
            parse_ranks(bad, 4)


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_row_blocks_cover_every_row_once_balanced(rows, parts):
    blocks = row_blocks(rows, parts)
    assert len(blocks) == parts
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=10))
def test_reductions_match_numpy(numbers):
    assert reduce_values(numbers, "sum") == pytest.approx(float(np.sum(numbers)))
    assert reduce_values(numbers, "min") == min(numbers)
    assert reduce_values(numbers, "max") == max(numbers)
    assert reduce_values(numbers, "mean") == pytest.approx(float(np.mean(numbers)))
    assert list(reduce_values(numbers, "concat")) == numbers


def test_weighted_mean_and_array_reductions():
    assert reduce_values([1.0, 4.0], "mean", weights=[3, 1]) == pytest.approx(1.75)
    arrays = [np.array([1, 5]), np.array([3, 2])]
    assert list(reduce_values(arrays, "sum")) == [4, 7]
    assert list(reduce_values(arrays, "max")) == [3, 5]
    assert reduce_values([np.ones((2, 3)), np.zeros((1, 3))], "concat").shape == (3, 3)


def test_reading_a_results_file_retries_a_read_that_meets_a_write(tmp_path):
    import h5py

    from distx.errors import UserError
    from distx.results.layout import FORMAT
    from distx.results.reader import read_results

    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as file:
        file.attrs["format"] = FORMAT
        file["numbers"] = [1, 2, 3]
    failures = iter([KeyError("bad object header"), OSError("truncated")])

    def flaky(file):
        failure = next(failures, None)
        if failure:
            raise failure
        return list(file["numbers"][()])

    assert read_results(path, flaky) == [1, 2, 3]

    def broken(file):
        raise OSError("always")

    with pytest.raises(UserError, match="the file is damaged"):
        read_results(path, broken, tries=3)


def test_mpi_library_name_has_no_nul_bytes():
    from distx.results.provenance import library_name

    padded = "Open MPI v5.0.11, package: Open MPI\x00\x00\x00"  # as Open MPI returns it
    assert library_name(padded) == "Open MPI v5.0.11, package: Open MPI"
    assert library_name("MPICH Version:      5.0.2\nMPICH Release date: x") == \
        "MPICH Version:      5.0.2"
