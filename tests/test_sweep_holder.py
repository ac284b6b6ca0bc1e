"""A holder's side of Run.Sweep in process: `Kernel.bind` and `_run_batch`.

`_run_batch` calls the kernel through the plain loop when a task needs nothing else, and
through a guard when it does (a Timeout to watch, an adopted partition); both must give the
same BatchResult, whatever the kernel returns. The MPI runs are in test_compute.py and
test_ulfm.py.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numba
import numpy as np
import pytest

from distx.bench import benchkernels
from distx.engine import sweep as sweep_module
from distx.engine.kernels import Kernel, KernelLibrary
from distx.engine.protocol import BatchResult, SweepPlan
from distx.engine.sweep import _ActiveSweep, _run_batch
from distx.script.grid import Grid

GRID = {"a": [1, 2, 3, 4], "b": [10.0, 20.0]}


def kernel_of(function) -> Kernel:
    python = getattr(function, "py_func", function)
    return Kernel(f"test.{python.__name__}", function,
                  dict(inspect.signature(python).parameters), __file__, 1)


def sweep(function, keyfields=GRID, fixed=None, outputs=("result",), todo=None, parts=1,
          watch=None) -> _ActiveSweep:
    grid = Grid(keyfields)
    kernel = kernel_of(function)
    todo = np.arange(grid.size) if todo is None else np.asarray(todo)
    plan = SweepPlan(1, kernel.name, [], {}, list(outputs), parts, todo)
    return _ActiveSweep(plan, kernel, grid, kernel.bind(fixed or {}, grid.names), watch)


def run(active: _ActiveSweep, task_ids=None) -> BatchResult:
    if task_ids is None:
        task_ids = np.arange(len(active.plan.todo) * active.plan.parts)
    return _run_batch(active, np.asarray(task_ids, dtype=np.int64))


def unwatched(task_id: int, keyfields: dict) -> nullcontext:
    return nullcontext()


def assert_same(fast: BatchResult, guarded: BatchResult) -> None:
    """Equal but for the clock readings and the tracebacks (the guard is one frame more)."""
    assert fast.task_ids.tolist() == guarded.task_ids.tolist()
    assert fast.ok.tolist() == guarded.ok.tolist()
    assert fast.values.keys() == guarded.values.keys()
    for name in fast.values:
        np.testing.assert_array_equal(fast.values[name], guarded.values[name])
        assert fast.values[name].dtype == np.float64
    assert fast.arrays.keys() == guarded.arrays.keys()
    for name, (positions, block) in fast.arrays.items():
        assert positions.tolist() == guarded.arrays[name][0].tolist()
        for mine, theirs in zip(block.arrays(), guarded.arrays[name][1].arrays()):
            np.testing.assert_array_equal(mine, theirs)
    assert list(fast.errors) == list(guarded.errors)
    for position, (text, compile_error) in fast.errors.items():
        assert text.splitlines()[0] == guarded.errors[position][0].splitlines()[0]
        assert compile_error == guarded.errors[position][1]


def assert_times(result: BatchResult) -> None:
    """Every task has its own interval; the next one starts where it ended."""
    assert len(result.start) == len(result.end) == len(result.task_ids)
    assert (result.start <= result.end).all()
    assert (result.end[:-1] == result.start[1:]).all()


def both_ways(function, **options) -> BatchResult:
    fast = run(sweep(function, **options))
    guarded = run(sweep(function, watch=unwatched, **options))
    assert_same(fast, guarded)
    assert_times(fast)
    assert_times(guarded)
    return fast


def scaled(a, b):
    return a * b


def big_int(a, b):
    return 2 ** 70 if a == 2 else a


def plain_or_numpy(a, b):
    return np.float32(a) if b > 15 else float(a)


def one_fails(a, b):
    if a == 3 and b == 10.0:
        raise ValueError("no three")
    return a + b


def exits(a, b):
    if a == 1:
        raise SystemExit(3)
    return b


def a_dict(a, b):
    return {"x": a} if a == 4 else a


def array_or_number(a, b):
    return np.full(a, b) if a % 2 else a * b


def a_string(a, b):
    return "text" if b > 15 else 1.0


@pytest.mark.parametrize("function, expected", [
    (scaled, [10.0, 20.0, 20.0, 40.0, 30.0, 60.0, 40.0, 80.0]),
    (lambda a, b: a, [1, 1, 2, 2, 3, 3, 4, 4]),                       # int
    (lambda a, b: a > 2, [0, 0, 0, 0, 1, 1, 1, 1]),                   # bool
    (lambda a, b: np.int64(a) * 3, [3, 3, 6, 6, 9, 9, 12, 12]),        # numpy int
    (lambda a, b: np.bool_(b > 15), [0, 1, 0, 1, 0, 1, 0, 1]),         # numpy bool
    (plain_or_numpy, [1, 1, 2, 2, 3, 3, 4, 4]),                         # float and float32
    (lambda a, b: 2 ** 62 + a, [2.0 ** 62 + a for a in (1, 1, 2, 2, 3, 3, 4, 4)]),
    (lambda a, b: (a,), [1, 1, 2, 2, 3, 3, 4, 4]),                     # a 1-tuple
])
def test_numbers_are_recorded_alike_on_both_paths(function, expected):
    result = both_ways(function)
    assert result.ok.all() and not result.errors and not result.arrays
    assert result.values["result"].tolist() == expected


def test_an_int_beyond_64_bits_fails_its_task_alone():
    result = both_ways(big_int)
    assert result.ok.tolist() == [True, True, False, False, True, True, True, True]
    assert list(result.errors) == [2, 3]
    assert "integer too large for a 64-bit number" in result.errors[2][0]
    assert result.values["result"][[0, 4, 6]].tolist() == [1, 3, 4]
    assert np.isnan(result.values["result"][[2, 3]]).all()


def test_an_exception_in_the_middle_of_a_batch_fails_that_task_alone():
    result = both_ways(one_fails)
    assert result.ok.tolist() == [True, True, True, True, False, True, True, True]
    text, compile_error = result.errors[4]
    assert text.startswith("kernel test.one_fails") and "ValueError: no three" in text
    assert "Traceback" in text and not compile_error
    assert np.isnan(result.values["result"][4])
    assert result.values["result"][[3, 5]].tolist() == [22.0, 23.0]


def test_sys_exit_in_a_kernel_fails_its_task():
    result = both_ways(exits)
    assert result.ok.tolist() == [False, False] + [True] * 6
    assert "SystemExit: 3" in result.errors[0][0]


@pytest.mark.parametrize("function, message", [(a_dict, "returned dict for 'result'"),
                                               (a_string, "returned str for 'result'")])
def test_a_result_that_is_not_a_number_fails_its_task(function, message):
    result = both_ways(function)
    assert not result.ok.all()
    assert all(message in text for text, _ in result.errors.values())
    assert result.values["result"][result.ok].tolist() == [
        function(a, b) for a in GRID["a"] for b in GRID["b"]
        if not isinstance(function(a, b), (dict, str))]


def test_arrays_and_numbers_of_one_output():
    result = both_ways(array_or_number)
    positions, block = result.arrays["result"]
    assert positions.tolist() == [0, 1, 4, 5]          # a = 1 and a = 3
    assert [array.tolist() for array in block.arrays()] == [
        [10.0], [20.0], [10.0] * 3, [20.0] * 3]
    assert result.values["result"][[2, 3, 6, 7]].tolist() == [20.0, 40.0, 40.0, 80.0]


def test_several_outputs_from_a_tuple():
    result = both_ways(lambda a, b: (a, b, np.arange(a)), outputs=("x", "y", "z"))
    assert result.values["x"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert result.values["y"].tolist() == [10, 20] * 4
    assert [array.tolist() for array in result.arrays["z"][1].arrays()] == [
        list(range(a)) for a in GRID["a"] for _ in GRID["b"]]
    wrong = both_ways(lambda a, b: (a, b), outputs=("x", "y", "z"))
    assert not wrong.ok.any()
    assert "returned 2 value(s) but Outputs names 3" in wrong.errors[0][0]


def test_a_failing_task_among_several_outputs_keeps_its_own_error():
    def pair_or_fail(a, b):
        if a == 2:
            raise KeyError("two")
        return a, np.arange(2) + b

    result = both_ways(pair_or_fail, outputs=("x", "z"))
    assert result.ok.tolist() == [True, True, False, False, True, True, True, True]
    assert all("KeyError: 'two'" in result.errors[position][0] for position in (2, 3))
    assert np.isnan(result.values["x"][[2, 3]]).all()
    assert result.arrays["z"][0].tolist() == [0, 1, 4, 5, 6, 7]


def test_keyfields_in_another_order_fixed_args_and_some_keyfields_only():
    def b_then_a(b, a):
        return b - a

    def scale_first(scale, a, offset=0.0):
        return scale * a + offset

    def only_b(b):
        return b

    def keywords_only(*, a, scale):
        return a * scale

    def anything(**given):
        return given["a"] * given["scale"] + given["b"]

    def fixed_between(a, scale, b):
        return a * scale + b

    fixed = {"scale": 3.0, "unused": "not taken"}
    expected = {b_then_a: [b - a for a in GRID["a"] for b in GRID["b"]],
                scale_first: [3.0 * a for a in GRID["a"] for b in GRID["b"]],
                only_b: GRID["b"] * 4,
                keywords_only: [3.0 * a for a in GRID["a"] for b in GRID["b"]],
                fixed_between: [3.0 * a + b for a in GRID["a"] for b in GRID["b"]]}
    for function, values in expected.items():
        assert both_ways(function, fixed=fixed).values["result"].tolist() == values
    with_kwargs = both_ways(anything, fixed={"scale": 2.0})
    assert with_kwargs.values["result"].tolist() == [
        2.0 * a + b for a in GRID["a"] for b in GRID["b"]]


def test_bind_calls_positionally_where_the_signature_allows():
    def leading_fixed(values, a, b, scale=1.0):
        return values, a, b, scale

    binding = kernel_of(leading_fixed).bind({"values": "V", "scale": 2.0}, ["b", "a"])
    assert binding.names == ("a", "b")                  # the signature's order
    assert binding.function(1, 10.0) == ("V", 1, 10.0, 2.0)

    def fixed_between(a, scale, b):
        return a, scale, b

    binding = kernel_of(fixed_between).bind({"scale": 2.0}, ["a", "b"])
    assert binding.names == ("a", "b")                  # by keyword: the grid's order
    assert binding.function(1, 10.0) == (1, 2.0, 10.0)
    assert kernel_of(lambda: 7).bind({"x": 1}, ["a"]).function() == 7


def test_a_decorated_kernel_whose_wrapper_takes_keywords_only():
    def by_keyword(function):
        @functools.wraps(function)
        def wrapper(**arguments):
            return function(**arguments)
        return wrapper

    @by_keyword
    def scaled(a, b):
        return a * b

    assert both_ways(scaled).values["result"].tolist() == [
        a * b for a in GRID["a"] for b in GRID["b"]]


def test_the_keyfields_of_the_planned_experiments_and_the_watch():
    watched = []

    def watch(task_id, keyfields):
        watched.append((task_id, keyfields))
        return nullcontext()

    todo = [5, 2, 7]                                     # grid indices still to run
    fast = run(sweep(lambda a, b: a * 100 + b, todo=todo), [2, 0])
    guarded = run(sweep(lambda a, b: a * 100 + b, todo=todo, watch=watch), [2, 0])
    assert_same(fast, guarded)
    assert fast.values["result"].tolist() == [420.0, 320.0]
    assert watched == [(2, {"a": 4, "b": 20.0}), (0, {"a": 3, "b": 20.0})]


def test_adopted_partitions_run_with_their_own_binding():
    def offset_by(a, row_offset):
        return a + row_offset

    active = sweep(offset_by, keyfields={"a": [1, 2, 3]}, fixed={"row_offset": 0}, parts=2)
    active.adopted[1] = active.kernel.bind({"row_offset": 1000}, active.grid.names)
    result = run(active)                                 # tasks 0..5: (position, part)
    assert result.values["result"].tolist() == [1, 1001, 2, 1002, 3, 1003]
    assert_times(result)


def test_a_numba_kernel_on_both_paths():
    library = KernelLibrary(Path(benchkernels.__file__).parent)
    kernel = library.get("benchkernels.sum_squares")
    grid = Grid({"seed": list(range(5))})
    plan = SweepPlan(1, kernel.name, [], {}, ["result"], 1, np.arange(5))
    fixed = {"values": np.arange(4.0)}
    results = [_run_batch(_ActiveSweep(plan, kernel, grid, kernel.bind(fixed, grid.names),
                                       watch), np.arange(5)) for watch in (None, unwatched)]
    assert_same(*results)
    assert results[0].values["result"].tolist() == [14.0] * 5


def test_a_kernel_that_cannot_compile_is_a_compile_error():
    @numba.njit
    def adds_a_string(a, b):
        return a + "x"

    result = both_ways(adds_a_string, keyfields={"a": [1, 2], "b": [1.0]})
    assert not result.ok.any()
    assert all(compile_error for _, compile_error in result.errors.values())


@pytest.mark.parametrize("results", [
    [np.arange(3.0), np.arange(2), np.ones((2, 2), dtype=bool)],
    [np.zeros(0), np.array([1.5])],
    [np.arange(3.0), np.array(7.0)],           # a 0-d array is a number
    [np.arange(3.0), np.array(["text"])],      # an array of text fails its task
])
def test_a_batch_of_arrays_is_taken_as_each_result_would_be(monkeypatch, results):
    """All arrays of numbers (the array sweep) are packed at once, without checking each
    result alone: the outcome is the same as the check's."""
    kernel = SimpleNamespace(name="test.arrays", place="test.py:1")
    fast_errors, slow_errors = {}, {}
    fast = sweep_module._outputs(list(results), fast_errors, ["result"], kernel)
    monkeypatch.setattr(sweep_module, "_plain_arrays", lambda results: False)
    slow = sweep_module._outputs(list(results), slow_errors, ["result"], kernel)
    assert fast_errors == slow_errors
    np.testing.assert_array_equal(fast[0]["result"], slow[0]["result"])
    assert fast[1].keys() == slow[1].keys()
    for (fast_positions, fast_block), (slow_positions, slow_block) in zip(
            fast[1].values(), slow[1].values()):
        assert fast_positions.tolist() == slow_positions.tolist()
        assert [a.tolist() for a in fast_block.arrays()] == \
            [a.tolist() for a in slow_block.arrays()]
