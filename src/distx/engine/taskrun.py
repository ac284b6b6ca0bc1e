"""Running tasks on a rank: what tasks need beyond the rank core, and one task being run.

`Executor` holds a rank's core, its data partitions, its kernels, the values expansion
sees, and the features attached to it (the halo mailbox, the sweep's holder side, rank 0's
coordinator). `TaskRun` is one task of the sequence being run: its expanded config, its
log, and the helpers the task types of `tasks.py` share (publish, targets, timeouts, kernel
arguments, files).
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections import ChainMap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from distx.engine.core import RankCore
from distx.engine.data import Partition
from distx.engine.kernels import KernelLibrary, kernel_arguments
from distx.engine.output import OUTPUT, OutputCapture
from distx.engine.protocol import EventKind
from distx.engine.transport import LocalTransport
from distx.engine.watchdog import watch_kernel
from distx.errors import Cancelled, TaskFailed, UserError
from distx.lazy import numpy as np
from distx.script.expand import expand
from distx.script.model import TaskSpec
from distx.script.roles import default_target
from distx.script.schema import Keys, check_expanded
from distx.vocabulary import TaskStatus

Feature = TypeVar("Feature")


class Executor:
    """One rank's means to run tasks."""

    def __init__(self, core: RankCore) -> None:
        self.core = core
        info = core.info
        self.info = info
        self.rank = core.rank
        self.script_folder = info.script.folder
        self.temp_folder = info.temp_root / f"rank{self.rank}"
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        self.expansion_values = ChainMap(core.values, info.overrides, info.script.parameters)
        self.partitions: dict[str, Partition] = {}
        self.kernels = KernelLibrary(info.kernels_folder or info.script.kernels_dir)
        self.command_groups: set[int] = set()  # process groups of Run.CliExecute commands
        self._features: dict[type, Any] = {}
        transport = core.transport
        self.output = OutputCapture(enabled=not (isinstance(transport, LocalTransport)
                                                 and transport.size > 1))

    def kernel_output(self, lines: list[str], index: int) -> None:
        """What kernels printed outside a task of this rank's sequence (sweep tasks): to
        rank 0's /logs with this rank, task index `index`, and to stderr with its prefix."""
        if not lines:
            return
        now = time.time()
        self.core.emit(EventKind.LOG, {"role": self.core.role, "index": index,
                                       "log": [(now, OUTPUT, line) for line in lines]})
        for line in lines:
            self.core.echo(line, OUTPUT)

    def attach(self, feature: Any) -> None:
        """Make `feature` (one object per class) reachable from the tasks of this rank."""
        self._features[type(feature)] = feature

    def feature(self, kind: type[Feature]) -> Feature:
        return self._features[kind]

    @property
    def builtins(self) -> dict[str, Any]:
        info = self.info
        return {"RunId": info.run_id, "Rank": self.rank, "Size": info.plan.size,
                "Role": self.core.role, "Name": info.script.name,
                "TempFolder": str(self.temp_folder), "Host": info.hosts[self.rank],
                "ScriptFolder": str(self.script_folder)}

    def kernel_arguments(self, inputs: list[str], args: dict) -> dict[str, Any]:
        """What a kernel gets on this rank (see kernels.kernel_arguments)."""
        for name in inputs:
            if name not in self.partitions:
                raise TaskFailed(f"{self.core.describe(self.rank)} holds no partition of "
                                 f"'{name}' (partitions live on ranks "
                                 f"{list(self.info.plan.holders)})")
        return kernel_arguments([self.partitions[name] for name in inputs], args)

    def preload_kernels(self, kernel_names: set[str]) -> None:
        """Import the kernel modules this rank will call, before its sequence starts.

        Importing numba costs a fraction of a second per process; doing it here overlaps
        with rank 0's own start-up instead of delaying the first kernel task or sweep.
        Problems are left to the task that uses the kernel, which reports them properly.
        """
        for name in kernel_names:
            with contextlib.suppress(UserError):
                self.kernels.get(name)


class TaskRun:
    """One task being executed: its expanded config, its log, its place in the sequence."""

    def __init__(self, executor: Executor, spec: TaskSpec, previous_log: list[str]) -> None:
        self.executor = executor
        self.core = executor.core
        self.spec = spec
        self.previous_log = previous_log
        self.lines: list[tuple[float, str, str]] = []

    def execute(self, run: Callable[[TaskRun, dict], None], keys: Keys,
                shell_keys: tuple[str, ...]) -> list[str]:
        """Run the task with `run(task_run, config)`, report it to rank 0, return its log
        text for the next task."""
        start, status, error = time.time(), TaskStatus.DONE, ""
        try:
            run(self, self._expanded_config(keys, shell_keys))
        except (TaskFailed, UserError) as failure:
            status, error = TaskStatus.ERROR, str(failure)
            self.log(error, "ERROR")
            raise TaskFailed(f"task {self.spec.index} {self.spec.task} failed: {failure}") \
                from failure
        except Cancelled as stop:
            status, error = TaskStatus.CANCELLED, str(stop)
            raise
        except Exception as bug:
            status = TaskStatus.ERROR
            error = f"{type(bug).__name__}: {bug}\n" + "".join(traceback.format_exception(bug))
            self.log(error, "ERROR")
            raise TaskFailed(f"task {self.spec.index} {self.spec.task} failed: "
                             f"{type(bug).__name__}: {bug}") from bug
        finally:
            self.core.emit(EventKind.TASK, self.record(status, start, error))
            if status == TaskStatus.ERROR:
                self.core.echo(f"task {self.spec.index} {self.spec.task} failed: "
                               f"{error.splitlines()[0] if error else ''}", "ERROR")
        return [text for _, _, text in self.lines]

    def record(self, status: TaskStatus, start: float, error: str) -> dict:
        """The task's row of /tasks, with its log lines."""
        return {"role": self.spec.role, "index": self.spec.index, "task": self.spec.task,
                "status": status.value, "start": start, "end": time.time(), "error": error,
                "log": self.lines}

    @contextlib.contextmanager
    def kernel_call(self, config: dict, kernel: str) -> Iterator[None]:
        """Around one kernel call: what it prints goes to this task's log (OUTPUT) and to
        stderr with the rank prefix; with a Timeout in the config, a call that outlives it
        ends the run (see watchdog.py)."""
        with self.kernel_calls(config, kernel) as call, call():
            yield

    @contextlib.contextmanager
    def kernel_calls(self, config: dict, kernel: str
                     ) -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
        """Around many calls of one kernel (Run.Iterate's steps): yield what to put around
        each call, as `kernel_call` does for one. The output is redirected once, for
        the whole block, and each call's lines are logged when it returns."""
        timeout = float(config["Timeout"]) if "Timeout" in config else None
        with self.executor.output.redirect() as take:
            @contextlib.contextmanager
            def call() -> Iterator[None]:
                start = time.time()

                def stuck(error: str) -> dict:
                    self.log(error, "ERROR")
                    return {"task": self.record(TaskStatus.ERROR, start, error)}
                try:
                    with watch_kernel(self.core, kernel, timeout, stuck):
                        yield
                finally:
                    for line in take():
                        self.log(line, OUTPUT, echo=True)
            yield call

    def _expanded_config(self, keys: Keys, shell_keys: tuple[str, ...]) -> dict:
        """The Config with its references replaced, each key checked against its type
        again (a value from a reference was not known at validation). Shell keys stay
        as written: their references become variables (see script/shell.py)."""
        executor = self.executor
        config = {}
        for key, value in self.spec.config.items():
            if key in shell_keys:
                config[key] = value
            else:
                config[key] = expand(value, executor.expansion_values, executor.builtins)
                check_expanded(key, value, config[key], keys)
        return config

    def log(self, text: str, severity: str = "INFO", echo: bool = False) -> None:
        self.lines.append((time.time(), severity, text))
        if echo or self.executor.info.verbose:
            self.core.echo(text, severity)

    def publish(self, key: str, value: Any) -> None:
        self.core.publish(key, value)
        self.log(f"published {key} = {_short(value)}")

    def targets(self, target: str | int | None) -> tuple[int, ...]:
        """The ranks a `From:` names; without one, the other role (if there is one)."""
        info = self.executor.info
        if target is None:
            target = default_target(info.script, self.spec.role)
            if target is None:
                raise TaskFailed("From is needed: there is more than one other role")
        try:
            return info.plan.resolve(target)
        except ValueError as error:
            raise TaskFailed(str(error)) from None

    def timeout(self, config: dict) -> float:
        """The task's own Timeout, else the run's default (script Timeout or --timeout)."""
        return float(config.get("Timeout", self.executor.info.timeout))

    def readable_path(self, text: str, any_folder: bool) -> Path:
        """A path under the script's folder or the run's temp folder (unless AnyFolder)."""
        folder = self.executor.script_folder
        path = Path(text)
        if not path.is_absolute():
            path = folder / path
        path = path.resolve()
        allowed = (folder, self.executor.info.temp_root.resolve())
        if not any_folder and not any(path.is_relative_to(place) for place in allowed):
            raise TaskFailed(f"{path} is outside the script's folder and the run's temp folder;"
                             " set AnyFolder: true to read it")
        return path

    def keep_file(self, path: Path, name: str, data: np.ndarray) -> None:
        """Send a kept file's bytes to rank 0 for the results file."""
        self.core.emit(EventKind.FILE, {"role": self.spec.role, "index": self.spec.index,
                                        "name": name, "source": str(path), "data": data})
        self.log(f"kept file {name} ({data.size} bytes)")


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape} {value.dtype}"
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."
