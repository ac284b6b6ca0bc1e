"""Kernels: `module.function` from the script's kernels folder, numba-compiled or plain Python.

A kernel is called with the local partitions named in `Inputs`, the experiment's keyfields,
`Args`, and, if it asks for them by name, `row_offset` (global index of its first row) and
`global_rows` (rows of the whole array) of its first input. Only the names its signature
takes are passed unless it takes `**kwargs`; they are passed by keyword, or positionally
where the signature takes them in an order that allows it (the same call, cheaper: see
`Kernel.bind`). A `@numba.njit(cache=True)` kernel compiles once per machine; every rank
and every later run reuses the cache.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distx.engine.data import Partition
from distx.errors import TaskFailed, UserError
from distx.lazy import numpy as np
from distx.results.arrays import KINDS as ARRAY_KINDS
from distx.script.schema import suggestion

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
PARTITION_NAMES = ("row_offset", "global_rows", "global_shape")
DEFAULT_OUTPUTS = ("result",)  # a sweep's output column when its Config names no Outputs


def kernel_arguments(inputs: list[Partition], args: dict) -> dict[str, Any]:
    """What a kernel task gives its kernel: each input's local array, where the first
    input's rows sit in the whole array (PARTITION_NAMES), and the Args. Validation builds
    the same from empty example arrays."""
    arguments: dict[str, Any] = {partition.name: partition.array for partition in inputs}
    if inputs:
        shape = tuple(inputs[0].global_shape)
        arguments.update(row_offset=inputs[0].offset, global_rows=shape[0] if shape else 0,
                         global_shape=shape)
    arguments.update(args)
    return arguments


KERNEL_ERRORS = (Exception, SystemExit)
"""What a failing kernel call raises that fails its task: sys.exit() must not end the rank
(KeyboardInterrupt still does)."""


@dataclass(frozen=True)
class Binding:
    """A kernel with its fixed arguments given: `function(*values)` calls it with the
    values of the varying arguments `names` (in that order); it raises what the kernel
    raises."""

    names: tuple[str, ...]
    function: Callable[..., Any]


@dataclass
class Kernel:
    name: str
    function: Any
    parameters: dict[str, inspect.Parameter]
    file: str
    line: int

    @property
    def place(self) -> str:
        return f"{self.file}:{self.line}"

    def check_arguments(self, available: set[str]) -> None:
        """Raise UserError if the kernel needs an argument that will not be given."""
        if any(p.kind is p.VAR_KEYWORD for p in self.parameters.values()):
            return
        missing = [name for name, parameter in self.parameters.items()
                   if parameter.default is parameter.empty
                   and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD,
                                          parameter.KEYWORD_ONLY)
                   and name not in available]
        if missing:
            raise UserError(f"kernel {self.name} takes {', '.join(missing)} but the task "
                            f"gives only {', '.join(sorted(available)) or 'nothing'}",
                            file=self.file, line=self.line,
                            fix="name them in Inputs, Args or the Keyfields, or give them "
                            "defaults")

    def _takes(self, name: str) -> bool:
        return name in self.parameters or any(
            p.kind is p.VAR_KEYWORD for p in self.parameters.values())

    def call(self, arguments: Mapping[str, Any]) -> Any:
        """Call with the arguments the kernel takes; its errors become TaskFailed."""
        try:
            return self.bind(arguments, ()).function()
        except KERNEL_ERRORS as error:
            raise self.failure(error) from error

    def bind(self, fixed: Mapping[str, Any], varying: Iterable[str]) -> Binding:
        """The kernel for many calls that differ only in the `varying` arguments (a sweep's
        keyfields): which arguments it takes, and how, is worked out once, not per call.

        The call is positional where the signature allows it (the varying arguments it
        takes come right after the fixed ones it takes positionally), which is the
        cheapest call there is; otherwise every argument is passed by keyword, as it is
        to a decorated function (its wrapper may take only keywords).
        """
        chosen = {key: value for key, value in fixed.items() if self._takes(key)}
        taken = [name for name in varying if self._takes(name)]
        leading = self._leading_fixed(chosen)
        following = list(self.parameters.values())[len(leading):len(leading) + len(taken)]
        own_signature = hasattr(self.function, "py_func") or \
            not hasattr(self.function, "__wrapped__")  # numba's, or not a wrapper's
        if own_signature and all(_positional(p) for p in following) and \
                sorted(p.name for p in following) == sorted(taken):
            given = {key: value for key, value in chosen.items() if key not in leading}
            function = functools.partial(self.function, *(chosen[name] for name in leading),
                                         **given) if chosen else self.function
            return Binding(tuple(p.name for p in following), function)
        names, function = tuple(taken), self.function

        def by_keyword(*values: Any) -> Any:
            return function(**chosen, **dict(zip(names, values)))
        return Binding(names, by_keyword)

    def _leading_fixed(self, chosen: Mapping[str, Any]) -> list[str]:
        """The names of `chosen` that open the signature, in its order, if positional."""
        leading = []
        for parameter in self.parameters.values():
            if parameter.name not in chosen or not _positional(parameter):
                break
            leading.append(parameter.name)
        return leading

    def typing_error(self, examples: Iterable[Mapping[str, Any]]) -> str | None:
        """For a numba kernel: why it cannot compile for the types of these example
        arguments (one mapping per signature the run will use), or None.

        Compiling at validation turns a typing error into exit code 2 before any rank
        starts; a `cache=True` kernel is then loaded from the cache by the ranks. A value
        numba cannot type is left to the run, which reports it when the kernel is called.
        """
        template = getattr(self.function, "get_call_template", None)
        if template is None:
            return None
        import numba
        from numba.core.errors import NumbaError

        for example in examples:
            try:
                types = {name: numba.typeof(value) for name, value in example.items()
                         if name in self.parameters}
            except ValueError:
                continue
            try:
                template((), types)
            except NumbaError as error:
                given = ", ".join(f"{name}: {kind}" for name, kind in types.items())
                return f"{summarize_numba_error(str(error))} (arguments: {given or 'none'})"
        return None

    def failure(self, error: BaseException) -> TaskFailed:
        return TaskFailed(f"kernel {self.name} ({self.place}) raised "
                          f"{type(error).__name__}: {error}\n"
                          + "".join(traceback.format_exception(error)))


class KernelLibrary:
    """Kernels of one kernels folder, each module imported once per process."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._modules: dict[str, Any] = {}
        self._kernels: dict[str, Kernel] = {}

    def get(self, name: str) -> Kernel:
        if name not in self._kernels:
            self._kernels[name] = self._load(name)
        return self._kernels[name]

    def _load(self, name: str) -> Kernel:
        module_name, dot, function_name = name.rpartition(".")
        if not dot or not module_name or not function_name:
            raise UserError(f"kernel '{name}' must be written module.function",
                            fix="e.g. montecarlo.count_inside for kernels/montecarlo.py")
        module = self._module(module_name)
        function = getattr(module, function_name, None)
        if function is None or not callable(function):
            public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                      and getattr(v, "__module__", None) == module.__name__
                      or hasattr(v, "py_func")]
            raise UserError(f"kernel module {module_name} has no function '{function_name}'."
                            + suggestion(function_name, public), file=module.__file__,
                            fix=f"define it or use one of: {', '.join(sorted(public))}")
        python_function = getattr(function, "py_func", function)
        try:
            parameters = dict(inspect.signature(python_function).parameters)
            file = inspect.getsourcefile(python_function) or module.__file__
            line = inspect.getsourcelines(python_function)[1]
        except (TypeError, ValueError, OSError):
            parameters, file, line = {}, module.__file__, 0
        return Kernel(name, function, parameters, file, line)

    def _module(self, module_name: str) -> Any:
        if module_name in self._modules:
            return self._modules[module_name]
        if not self.folder.is_dir():
            raise UserError(f"the kernels folder {self.folder} does not exist",
                            fix="create it, or set Kernels: to the folder holding your kernels")
        path = self.folder.joinpath(*module_name.split(".")).with_suffix(".py")
        if not path.is_file():
            available = sorted(p.stem for p in self.folder.glob("*.py"))
            raise UserError(f"no kernel module {module_name} ({path} does not exist)."
                            + suggestion(module_name, available),
                            fix=f"available modules: {', '.join(available) or 'none'}")
        loaded = sys.modules.get(module_name)
        if loaded is not None:
            if Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
                self._modules[module_name] = loaded
                return loaded
            raise UserError(f"kernel module name '{module_name}' is already taken by "
                            f"{getattr(loaded, '__file__', None) or 'a built-in module'}",
                            file=str(path), fix="rename the kernel module")
        # The plain module name, as `import` from the kernels folder would give: numba's
        # cache records it, so distx and the user's own imports share one cache.
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        if str(self.folder) not in sys.path:
            sys.path.insert(0, str(self.folder))
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as error:
            del sys.modules[module_name]
            raise UserError(f"syntax error in kernel module: {error.msg}", file=str(path),
                            line=error.lineno, fix="correct the Python syntax") from None
        except Exception as error:
            del sys.modules[module_name]
            frames = traceback.extract_tb(error.__traceback__)
            line = next((f.lineno for f in reversed(frames) if f.filename == str(path)), None)
            raise UserError(f"importing kernel module failed: {type(error).__name__}: {error}",
                            file=str(path), line=line) from None
        self._modules[module_name] = module
        return module


def outputs_of(result: Any, names: list[str], kernel: Kernel) -> dict[str, Any]:
    """Name the kernel's result: a scalar or array is one output, a tuple one per name."""
    values = list(result) if isinstance(result, tuple) else [result]
    if len(values) != len(names):
        raise TaskFailed(f"kernel {kernel.name} ({kernel.place}) returned {len(values)} "
                         f"value(s) but Outputs names {len(names)}: {', '.join(names)}")
    named = {}
    for name, value in zip(names, values):
        if isinstance(value, np.ndarray) and value.dtype.kind not in ARRAY_KINDS:
            raise TaskFailed(f"kernel {kernel.name} ({kernel.place}) returned an array of "
                             f"{value.dtype} for '{name}': return an array of numbers "
                             "(bool, integer or float)")
        if isinstance(value, np.ndarray):
            named[name] = value
        elif type(value) is int and not fits_int64(value):
            raise TaskFailed(f"kernel {kernel.name} ({kernel.place}) returned an integer "
                             f"too large for a 64-bit number for '{name}' ({_digits(value)}):"
                             " return a float, or scale it down")
        elif isinstance(value, (int, float, bool, np.integer, np.floating, np.bool_)):
            named[name] = value.item() if isinstance(value, np.generic) else value
        else:
            raise TaskFailed(f"kernel {kernel.name} ({kernel.place}) returned "
                             f"{type(value).__name__} for '{name}': return a number, a tuple "
                             "of numbers or a numpy array")
    return named


def _positional(parameter: inspect.Parameter) -> bool:
    return parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)


def fits_int64(value: int) -> bool:
    """True if a Python int can be stored as a 64-bit number (results are int64/float64)."""
    return -(1 << 63) <= value < (1 << 63)


def _digits(value: int) -> str:
    return f"{value.bit_length() * 0.30103:.0f} digits"


def summarize_numba_error(text: str) -> str:
    """One line of a numba compile error: what failed, and the kernel line it failed on."""
    lines = [line.strip() for line in text.splitlines()]
    what = [line for line in lines if line and not line.startswith(("Failed in", "During:"))]
    headline = what[0] if what else "numba could not compile it"
    if len(what) > 1 and what[1].startswith(">>>"):
        headline += " " + what[1].removeprefix(">>>").strip()
    place = re.findall(r'^File "(.+)", line (\d+):$', text, re.MULTILINE)
    if not place:
        return headline
    file, line = place[-1]
    code = text[text.rindex(f'File "{file}", line {line}:'):].splitlines()
    marker = next((i for i, row in enumerate(code) if row.strip() == "^"), None)
    quoted = f": {code[marker - 1].strip()}" if marker else ""
    return f"{headline} ({file}, line {line}{quoted})"


def is_compile_error(error: BaseException) -> bool:
    """True for numba typing/lowering errors: every later call would fail the same way."""
    cause = error.__cause__ or error
    return type(cause).__module__.startswith("numba.core.errors")


def warm_up_numba(compiler: bool) -> threading.Thread:
    """Import numba in a thread, and with `compiler` set up its CPU target too; return it.

    Both take 0.4-0.5 s of CPU in every process whose first numba kernel is loaded, even
    from the cache: numba's import (0.25-0.35 s), then its typing and lowering registries
    on the first load. A rank other than 0 runs this while rank 0 checks the script (its
    main thread sleeps waiting for the verdict), so that its kernels then load in
    milliseconds. The set-up holds numba's compiler lock, which every compilation and cache
    load takes too; a run whose kernels are plain functions in modules that import numba
    needs the import alone (set up all the same, it took 0.15-0.2 s of every holder's CPU
    while the bench's trivial sweep ran). It only saves time: whatever it meets, the
    kernel's own import meets again and reports.
    """
    def warm_up() -> None:
        with contextlib.suppress(Exception):  # see the docstring's last line
            import numba  # noqa: F401

            if compiler:
                from numba.core.compiler_lock import global_compiler_lock
                from numba.core.registry import cpu_target

                with global_compiler_lock:
                    cpu_target.target_context.refresh()

    thread = threading.Thread(target=warm_up, name="distx-numba-warm-up", daemon=True)
    thread.start()
    return thread
