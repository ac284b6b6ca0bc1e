"""The tasks a role's Sequence can run, with the Config keys each takes (ELCM names).

Each task is a function of (run, config): `run` is the `TaskRun` of `runtime.py` (the rank,
its log, its timeout), `config` the task's Config after variable expansion. Tasks that
wait (for milestones, values, processes, halos, sweep results) wait through the runtime,
so the rank keeps serving other ranks meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from distx.engine.command import execute as execute_command
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
    POSITIVE,
    REDUCE,
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


WAIT = {"Timeout": POSITIVE}


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
        pattern = re.compile(config["Pattern"])
    except re.error as error:
        raise TaskFailed(f"Pattern {config['Pattern']!r} is not a valid regex: {error}") from None
    keys = [(item, index + 1) if isinstance(item, str) else (item[1], item[0])
            for index, item in enumerate(config["Keys"])]
    found: dict[str, str] = {}
    for line in lines:
        match = pattern.search(line)
        if match:
            for key, group in keys:
                if group > pattern.groups:
                    raise TaskFailed(f"Pattern has {pattern.groups} group(s), no group {group}")
                if match.group(group) is not None:
                    found[key] = match.group(group)
    if not found:
        run.log(f"no line of {origin} matched {config['Pattern']!r}", "WARNING")
    for key, text in found.items():
        run.publish(key, _number_or_text(text))


def _number_or_text(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


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


@task("Run.Delay", Keys(required={"Time": POSITIVE}))
def delay(run: TaskRun, config: dict) -> None:
    run.runtime.sleep(float(config["Time"]))


@task("Run.CliExecute", Keys(required={"Parameters": STR},
                             optional={"CWD": STR, "Keep": STR_LIST, **WAIT}),
      shell_keys=("Parameters",))
def cli_execute(run: TaskRun, config: dict) -> None:
    """Run a /bin/sh command line; values reach it as variables, never as code."""
    execute_command(run, config)


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
