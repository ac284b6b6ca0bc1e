"""The tasks a role's Sequence can run, with the Config keys each takes (ELCM names).

Each task is a function of (run, config): `run` is the `TaskRun` of `runtime.py` (the rank,
its log, its timeout), `config` the task's Config after variable expansion. Tasks that
wait (for milestones, values, processes, halos, sweep results) wait through the runtime,
so the rank keeps serving other ranks meanwhile.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distx.engine.kernels import outputs_of
from distx.errors import TaskFailed
from distx.script.evaluate import evaluate
from distx.script.schema import (
    ANY,
    BOOL,
    COUNT,
    DICT,
    FROM,
    KEYS,
    REDUCE,
    SECONDS,
    SEVERITY,
    STR,
    STR_LIST,
    Keys,
)

if TYPE_CHECKING:
    from distx.engine.runtime import TaskRun


@dataclass(frozen=True)
class TaskType:
    name: str
    run: Callable[[TaskRun, dict], None]
    keys: Keys
    shell_keys: tuple[str, ...] = ()
    coordinator_only: bool = False
    needs_data: bool = field(default=False)


TASKS: dict[str, TaskType] = {}


def task(name: str, keys: Keys, **options: Any) -> Callable:
    def register(function: Callable[[TaskRun, dict], None]) -> Callable:
        TASKS[name] = TaskType(name, function, keys, **options)
        return function
    return register


WAIT = {"Timeout": SECONDS}


@task("Run.AddMilestone", Keys(required={"Milestone": STR}))
def add_milestone(run: TaskRun, config: dict) -> None:
    run.runtime.reach(config["Milestone"])
    run.log(f"reached milestone {config['Milestone']}")


@task("Remote.WaitForMilestone", Keys(required={"Milestone": STR},
                                      optional={"From": FROM, **WAIT}))
def wait_for_milestone(run: TaskRun, config: dict) -> None:
    ranks = run.targets(config.get("From"))
    run.log(f"waiting for milestone {config['Milestone']} from ranks {list(ranks)}")
    run.runtime.wait_for_milestone(config["Milestone"], ranks, run.timeout(config))


@task("Run.Publish", Keys(free=True))
def publish(run: TaskRun, config: dict) -> None:
    for key, value in config.items():
        run.publish(str(key), value)


@task("Run.PublishFromFile", Keys(required={"Path": STR, "Pattern": STR, "Keys": KEYS},
                                  optional={"AnyFolder": BOOL}))
def publish_from_file(run: TaskRun, config: dict) -> None:
    path = run.readable_path(config["Path"], config.get("AnyFolder", False))
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise TaskFailed(f"cannot read {path}: {error.strerror}") from None
    _publish_matches(run, lines, config, str(path))


@task("Run.PublishFromPreviousTaskLog", Keys(required={"Pattern": STR, "Keys": KEYS}))
def publish_from_previous_task_log(run: TaskRun, config: dict) -> None:
    _publish_matches(run, run.previous_log, config, "the previous task's log")


def _publish_matches(run: TaskRun, lines: list[str], config: dict, origin: str) -> None:
    """Publish the groups of `Pattern` on every matching line (later lines win)."""
    try:
        pattern = compile_pattern(config["Pattern"])
        captures = capture_keys(config["Keys"], pattern.groups)
    except ValueError as error:
        raise TaskFailed(str(error)) from None
    found: dict[Capture, str] = {}
    for line in lines:
        match = pattern.search(line)
        if match:
            for capture in captures:
                if match.group(capture.group) is not None:
                    found[capture] = match.group(capture.group)
    if not found:
        run.log(f"no line of {origin} matched {config['Pattern']!r}", "WARNING")
    for capture, text in found.items():
        run.publish(capture.name, capture.convert(text))


def compile_pattern(text: str) -> Any:
    """`text` compiled by RE2, whose matching time is linear in the line's length (no
    backtracking: `^(a+)+$` cannot run for minutes). ValueError says what RE2 refused,
    which includes backreferences and lookaround."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would also print the error on stderr
    try:
        return re2.compile(text, options)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args and isinstance(
            error.args[0], bytes) else str(error)
        raise ValueError(f"Pattern {text!r} is not a regular expression distx can match: "
                         f"{reason} (RE2 syntax: no backreferences or lookaround)") from None


@dataclass(frozen=True)
class Capture:
    """One of a pattern's groups, published as `name`: text unless the script asks for
    `int` or `float` (ELCM's captures are text: `001` stays "001", `1.10` stays "1.10")."""

    group: int
    name: str
    type: str = "text"

    def convert(self, text: str) -> Any:
        if self.type == "text":
            return text
        if self.type == "int" and _INTEGER.fullmatch(text) and abs(int(text)) < 2**63:
            return int(text)
        if self.type == "float" and _FLOAT.fullmatch(text) and math.isfinite(float(text)):
            return float(text)
        kind = "a 64-bit integer" if self.type == "int" else "a finite decimal number"
        raise TaskFailed(f"'{self.name}' (group {self.group}) captured {text[:80]!r}, "
                         f"not {kind}")


_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_FLOAT = re.compile(r"[+-]?([0-9]{1,400}\.?[0-9]{0,400}|\.[0-9]{1,400})([eE][+-]?[0-9]{1,3})?")


def capture_keys(keys: list, groups: int) -> list[Capture]:
    """The captures `Keys` names: `name` (group = its position + 1), `[group, name]` or
    `[group, name, type]`. ValueError for a group the pattern does not have."""
    captures = [Capture(position + 1, item) if isinstance(item, str) else Capture(*item)
                for position, item in enumerate(keys)]
    for capture in captures:
        if not 0 <= capture.group <= groups:
            raise ValueError(f"Keys names group {capture.group} ({capture.name}) but Pattern "
                             f"has {groups} group(s)")
    return captures


@task("Remote.GetValue", Keys(required={"Value": STR},
                              optional={"From": FROM, "PublishName": STR, "Reduce": REDUCE,
                                        **WAIT}))
def get_value(run: TaskRun, config: dict) -> None:
    ranks = run.targets(config.get("From"))
    gathered = run.runtime.get_values(config["Value"], ranks, run.timeout(config))
    names_one_rank = isinstance(config.get("From"), int) or str(config.get("From")).isdigit()
    if "Reduce" in config:
        value = reduce_values(gathered, config["Reduce"])
    elif names_one_rank:
        value = gathered[0]
    else:
        value = gathered  # one per rank of the role, in rank order, whatever their number
    run.publish(config.get("PublishName", config["Value"]), value)


def reduce_values(values: list, how: str, weights: list[float] | None = None) -> Any:
    """Combine per-rank (or per-partition) values: sum, min, max, mean, concat."""
    if how == "concat":
        parts = [np.atleast_1d(np.asarray(value)) for value in values]
        return np.concatenate(parts)
    arrays = [np.asarray(value) for value in values]
    if how == "sum":
        combined = np.sum(arrays, axis=0)
    elif how == "min":
        combined = np.min(arrays, axis=0)
    elif how == "max":
        combined = np.max(arrays, axis=0)
    else:
        combined = np.average(np.stack(arrays).astype(float), axis=0, weights=weights)
    return combined.item() if np.ndim(combined) == 0 else combined


@task("Run.Message", Keys(required={"Message": ANY}, optional={"Severity": SEVERITY}))
def message(run: TaskRun, config: dict) -> None:
    run.log(str(config["Message"]), config.get("Severity", "INFO").upper(), echo=True)


@task("Run.Delay", Keys(required={"Time": SECONDS}))
def delay(run: TaskRun, config: dict) -> None:
    run.runtime.sleep(float(config["Time"]))


@task("Run.CliExecute", Keys(required={"Parameters": STR},
                             optional={"CWD": STR, "Keep": STR_LIST, **WAIT}),
      shell_keys=("Parameters",))
def cli_execute(run: TaskRun, config: dict) -> None:
    """Run a shell command line; every value expanded into it was shell-quoted."""
    folder = Path(config.get("CWD", run.runtime.script_folder))
    if not folder.is_absolute():
        folder = run.runtime.script_folder / folder
    if not folder.is_dir():
        raise TaskFailed(f"CWD {folder} is not a folder")
    run.log(f"$ {config['Parameters']}  (in {folder})")
    with tempfile.TemporaryFile(mode="w+b") as output:
        process = subprocess.Popen(["/bin/sh", "-c", config["Parameters"]], cwd=folder,
                                   stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        try:
            run.runtime.wait_until(lambda: process.poll() is not None, run.timeout(config),
                                   f"command {config['Parameters']!r}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output.seek(0)
        lines = output.read().decode(errors="replace").splitlines()
    for line in lines:
        run.log(line, "OUTPUT")
    for pattern in config.get("Keep", []):
        for kept in sorted(folder.glob(pattern)):
            if kept.is_file():
                run.keep_file(kept, kept.relative_to(folder).as_posix())
    if process.returncode != 0:
        tail = "\n".join(lines[-5:])
        raise TaskFailed(f"command exited with code {process.returncode}"
                         + (f"; last output:\n{tail}" if tail else ""))


@task("Run.Evaluate", Keys(required={"Key": STR, "Expression": ANY}))
def evaluate_expression(run: TaskRun, config: dict) -> None:
    expression = config["Expression"]
    value = evaluate(str(expression), run.runtime.values) if isinstance(expression, str) \
        else expression
    run.publish(config["Key"], value)


KERNEL_KEYS = {"Kernel": STR}
KERNEL_OPTIONS = {"Inputs": STR_LIST, "Args": DICT, "Outputs": STR_LIST}


@task("Run.Kernel", Keys(required=KERNEL_KEYS,
                         optional={**KERNEL_OPTIONS, **WAIT, "Publish": STR}),
      needs_data=True)
def run_kernel(run: TaskRun, config: dict) -> None:
    kernel = run.runtime.kernels.get(config["Kernel"])
    arguments = run.runtime.kernel_arguments(config.get("Inputs", []), config.get("Args", {}))
    kernel.check_arguments(set(arguments))
    with run.kernel_timeout(config, config["Kernel"]):
        result = kernel.call(arguments)
    if "Outputs" in config:
        for name, value in outputs_of(result, config["Outputs"], kernel).items():
            run.publish(name, value)
    if "Publish" in config:
        value = outputs_of(result, ["result"], kernel)["result"] \
            if not isinstance(result, tuple) else list(result)
        run.publish(config["Publish"], value)
    run.log(f"kernel {config['Kernel']} done")


@task("Run.Sweep", Keys(required=KERNEL_KEYS,
                        optional={**KERNEL_OPTIONS, **WAIT, "Reduce": REDUCE}),
      coordinator_only=True)
def sweep(run: TaskRun, config: dict) -> None:
    from distx.engine.sweep import run_sweep

    run_sweep(run, config)


@task("Run.Iterate", Keys(required={**KERNEL_KEYS, "Steps": COUNT},
                          optional={"Inputs": STR_LIST, "Args": DICT, "Halo": COUNT, **WAIT}),
      needs_data=True)
def iterate(run: TaskRun, config: dict) -> None:
    """Step a kernel over a row-partitioned array, exchanging halo rows with neighbours."""
    from distx.engine.halo import iterate_with_halos

    iterate_with_halos(run, config)


def shell_quote(text: str) -> str:
    return shlex.quote(text)
