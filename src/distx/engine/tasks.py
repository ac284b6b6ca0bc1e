"""The task catalogue: every task type a role's Sequence can run, and all it knows.

Each task type declares, in one `@task(...)` registration beside the function that runs
it: its Config keys and their types (ELCM names), the values it publishes and the
milestones it adds, what it waits for (kind, name and `From`), the kernel arguments it
passes beyond Inputs and Args, whether only the coordinator may run it, and checks of its
own. Validation (check/checks.py) and the deadlock analysis (check/coordination.py) read
these declarations; the rank runs the function. Adding a task type touches this module
(and its tests) only.

A task runs as a function of (run, config): `run` is the `TaskRun` of `taskrun.py` (the
rank, its log, its timeout), `config` the task's Config after variable expansion. Tasks
that wait (for milestones, values, processes, halos, sweep results) wait through the rank
core, so the rank keeps serving other ranks meanwhile.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distx.engine.command import check_command
from distx.engine.command import execute as execute_command
from distx.engine.halo import HALO_ARGUMENTS, iterate_with_halos
from distx.engine.kernels import DEFAULT_OUTPUTS, outputs_of
from distx.engine.reduce import reduce_values
from distx.engine.sweep import run_sweep
from distx.engine.taskrun import TaskRun
from distx.errors import TaskFailed
from distx.script.evaluate import evaluate
from distx.script.model import ROWS, Script, TaskSpec
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
    is_reference,
)
from distx.vocabulary import AUTOMATIC

MILESTONE, VALUE = "milestone", "value"
MAX_SIGNATURES = 16  # keyfield type combinations compiled at validation


@dataclass(frozen=True)
class Wait:
    """What a task waits for: a milestone or a value `name` from the ranks `target` names
    (a role or a rank; None: the one other role)."""

    kind: str       # MILESTONE or VALUE
    name: Any
    target: Any


@dataclass(frozen=True)
class KernelExtras:
    """The kernel arguments a task passes beyond Inputs, Args and the partition names."""

    names: Callable[[Script], set[str]]
    examples: Callable[[Script, dict, dict], list[dict]]
    """(script, config, `base`: example Inputs/Args) -> values of the types it will pass."""


def _nothing(config: dict) -> set[str]:
    return set()


def _no_wait(config: dict) -> Wait | None:
    return None


def _no_check(script: Script, spec: TaskSpec) -> None:
    pass


@dataclass(frozen=True)
class TaskType:
    name: str
    run: Callable[[TaskRun, dict], None]
    keys: Keys
    shell_keys: tuple[str, ...] = ()          # left as written: see command.py
    coordinator_only: bool = False
    once_per_script: str = ""                 # if set: at most one such task; the fix
    kernel_on_holders: bool = False           # its kernel runs on the holders (preload)
    publishes: Callable[[dict], set[str]] = _nothing
    adds_milestones: Callable[[dict], set[str]] = _nothing
    waits_for: Callable[[dict], Wait | None] = _no_wait
    kernel_extras: KernelExtras | None = None
    check: Callable[[Script, TaskSpec], None] = _no_check  # its own validation


TASKS: dict[str, TaskType] = {}


def task(name: str, keys: Keys, **declared: Any) -> Callable:
    def register(function: Callable[[TaskRun, dict], None]) -> Callable:
        TASKS[name] = TaskType(name, function, keys, **declared)
        return function
    return register


WAIT = {"Timeout": SECONDS}


def _not_automatic(script: Script, spec: TaskSpec) -> None:
    if spec.config["Milestone"] in AUTOMATIC:
        raise script.error((*spec.where, "Config", "Milestone"),
                           f"milestone {spec.config['Milestone']} is reached automatically",
                           f"choose another name (automatic: {', '.join(AUTOMATIC)})")


@task("Run.AddMilestone", Keys(required={"Milestone": STR}),
      adds_milestones=lambda config: {config["Milestone"]}, check=_not_automatic)
def add_milestone(run: TaskRun, config: dict) -> None:
    run.core.reach(config["Milestone"])
    run.log(f"reached milestone {config['Milestone']}")


@task("Remote.WaitForMilestone", Keys(required={"Milestone": STR},
                                      optional={"From": FROM, **WAIT}),
      waits_for=lambda config: Wait(MILESTONE, config["Milestone"], config.get("From")))
def wait_for_milestone(run: TaskRun, config: dict) -> None:
    ranks = run.targets(config.get("From"))
    run.log(f"waiting for milestone {config['Milestone']} from ranks {list(ranks)}")
    run.core.wait_for_milestone(config["Milestone"], ranks, run.timeout(config))


@task("Run.Publish", Keys(free=True), publishes=lambda config: {str(key) for key in config})
def publish(run: TaskRun, config: dict) -> None:
    for key, value in config.items():
        run.publish(str(key), value)


def _key_names(config: dict) -> set[str]:
    """The names a `Keys:` list publishes (a name, [group, name] or [group, name, type])."""
    return {item if isinstance(item, str) else item[1] for item in config["Keys"]}


def _check_pattern(script: Script, spec: TaskSpec) -> None:
    """The regex compiles (with RE2) and has the groups Keys names."""
    if is_reference(spec.config["Pattern"]):
        return
    try:
        pattern = compile_pattern(spec.config["Pattern"])
    except ValueError as error:
        raise script.error((*spec.where, "Config", "Pattern"), str(error),
                           "correct the pattern") from None
    try:
        capture_keys(spec.config["Keys"], pattern.groups)
    except ValueError as error:
        raise script.error((*spec.where, "Config", "Keys"), str(error),
                           "add the group to Pattern or correct Keys") from None


@task("Run.PublishFromFile", Keys(required={"Path": STR, "Pattern": STR, "Keys": KEYS},
                                  optional={"AnyFolder": BOOL}), publishes=_key_names,
      check=_check_pattern)
def publish_from_file(run: TaskRun, config: dict) -> None:
    path = run.readable_path(config["Path"], config.get("AnyFolder", False))
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise TaskFailed(f"cannot read {path}: {error.strerror}") from None
    _publish_matches(run, lines, config, str(path))


@task("Run.PublishFromPreviousTaskLog", Keys(required={"Pattern": STR, "Keys": KEYS}),
      publishes=_key_names, check=_check_pattern)
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
                                        **WAIT}),
      publishes=lambda config: {config.get("PublishName", config["Value"])},
      waits_for=lambda config: Wait(VALUE, config["Value"], config.get("From")))
def get_value(run: TaskRun, config: dict) -> None:
    ranks = run.targets(config.get("From"))
    gathered = run.core.get_values(config["Value"], ranks, run.timeout(config))
    names_one_rank = isinstance(config.get("From"), int) or str(config.get("From")).isdigit()
    if "Reduce" in config:
        value = reduce_values(gathered, config["Reduce"])
    elif names_one_rank:
        value = gathered[0]
    else:
        value = gathered  # one per rank of the role, in rank order, whatever their number
    run.publish(config.get("PublishName", config["Value"]), value)


@task("Run.Message", Keys(required={"Message": ANY}, optional={"Severity": SEVERITY}))
def message(run: TaskRun, config: dict) -> None:
    run.log(str(config["Message"]), config.get("Severity", "INFO").upper(), echo=True)


@task("Run.Delay", Keys(required={"Time": SECONDS}))
def delay(run: TaskRun, config: dict) -> None:
    run.core.sleep(float(config["Time"]))


@task("Run.CliExecute", Keys(required={"Parameters": STR},
                             optional={"CWD": STR, "Keep": STR_LIST, **WAIT}),
      shell_keys=("Parameters",), check=check_command)
def cli_execute(run: TaskRun, config: dict) -> None:
    """Run a /bin/sh command line; values reach it as variables, never as code."""
    execute_command(run, config)


@task("Run.Evaluate", Keys(required={"Key": STR, "Expression": ANY}),
      publishes=lambda config: {config["Key"]})
def evaluate_expression(run: TaskRun, config: dict) -> None:
    expression = config["Expression"]
    value = evaluate(str(expression), run.core.values) if isinstance(expression, str) \
        else expression
    run.publish(config["Key"], value)


def _check_outputs(script: Script, spec: TaskSpec) -> None:
    """Outputs name values to publish or columns to write: distinct plain names."""
    seen: set[str] = set()
    for position, name in enumerate(spec.config.get("Outputs", [])):
        where = (*spec.where, "Config", "Outputs", position)
        if is_reference(name) or not name.strip() or "/" in name or name == ".":
            raise script.error(where, f"output name {name!r} is not a plain name",
                               "use a name such as loss or accuracy")
        if name in seen:
            raise script.error(where, f"output '{name}' is listed twice", "keep one of them")
        seen.add(name)


KERNEL_KEYS = {"Kernel": STR}
KERNEL_OPTIONS = {"Inputs": STR_LIST, "Args": DICT, "Outputs": STR_LIST}


def _kernel_publishes(config: dict) -> set[str]:
    return set(config.get("Outputs", [])) | ({config["Publish"]} if "Publish" in config
                                              else set())


@task("Run.Kernel", Keys(required=KERNEL_KEYS,
                         optional={**KERNEL_OPTIONS, **WAIT, "Publish": STR}),
      publishes=_kernel_publishes, check=_check_outputs)
def run_kernel(run: TaskRun, config: dict) -> None:
    executor = run.executor
    kernel = executor.kernels.get(config["Kernel"])
    arguments = executor.kernel_arguments(config.get("Inputs", []), config.get("Args", {}))
    kernel.check_arguments(set(arguments))
    with run.kernel_call(config, config["Kernel"]):
        result = kernel.call(arguments)
    if "Outputs" in config:
        for name, value in outputs_of(result, config["Outputs"], kernel).items():
            run.publish(name, value)
    if "Publish" in config:
        value = outputs_of(result, ["result"], kernel)["result"] \
            if not isinstance(result, tuple) else list(result)
        run.publish(config["Publish"], value)
    run.log(f"kernel {config['Kernel']} done")


def _keyfield_names(script: Script) -> set[str]:
    """The keyfields a sweep's kernel gets (with Folds, `fold` too)."""
    return set(script.experiments.grid().names)


def _keyfield_examples(script: Script, config: dict, base: dict) -> list[dict]:
    """One example per combination of keyfield value types (at most MAX_SIGNATURES)."""
    columns = script.experiments.grid().columns
    kinds = [list({type(value): value for value in values}.values())
             for values in columns.values()]
    combinations = itertools.islice(itertools.product(*kinds), MAX_SIGNATURES)
    return [{**base, **dict(zip(columns, combination))} for combination in combinations]


def _check_sweep(script: Script, spec: TaskSpec) -> None:
    if script.experiments is None:
        raise script.error(spec.where, "Run.Sweep needs an Experiments section",
                           "add Experiments: {Keyfields: {...}}")
    config = spec.config
    clash = _keyfield_names(script) & (set(config.get("Args", {}))
                                       | set(config.get("Inputs", [])))
    if clash:
        raise script.error((*spec.where, "Config"), f"{', '.join(sorted(clash))} is both "
                           "a keyfield and an input or argument", "rename one of them")
    _check_outputs(script, spec)
    _check_experiment_columns(script, spec)
    _check_sweep_reduce(script, spec)


def _check_experiment_columns(script: Script, spec: TaskSpec) -> None:
    """Keyfields and Outputs are columns of the experiments table, beside its own."""
    from distx.results.layout import EXPERIMENT_COLUMNS  # rank 0 checks; workers skip h5py

    keyfields = script.experiments.grid().names
    for name in keyfields:
        if name in EXPERIMENT_COLUMNS:
            raise script.error(("Experiments", "Keyfields", name), f"keyfield '{name}' has "
                               "the name of a column of the experiments table",
                               f"rename it (taken: {', '.join(EXPERIMENT_COLUMNS)})")
    given = "Outputs" in spec.config
    for position, name in enumerate(spec.config.get("Outputs", DEFAULT_OUTPUTS)):
        if name in EXPERIMENT_COLUMNS or name in keyfields:
            taken = "a keyfield" if name in keyfields else "a column of the experiments table"
            where = (*spec.where, "Config", *(("Outputs", position) if given else ()))
            raise script.error(where, f"output '{name}' has the name of {taken}",
                               f"rename it (taken: {', '.join((*EXPERIMENT_COLUMNS, *keyfields))})")


def _check_sweep_reduce(script: Script, spec: TaskSpec) -> None:
    """A sweep over row-partitioned inputs runs the kernel once per block and combines the
    blocks' results: how depends on the kernel (a sum of counts, a min, a mean...), so the
    script says it; a silent `sum` gave results that change with the number of ranks."""
    rows = [name for name in spec.config.get("Inputs", [])
            if name in script.data and script.data[name].partition == ROWS]
    if rows and "Reduce" not in spec.config:
        raise script.error((*spec.where, "Config"), f"Run.Sweep over row-partitioned "
                           f"input '{rows[0]}' needs Reduce: the kernel runs once per block "
                           "of rows and Reduce combines the blocks' results",
                           "add Reduce: sum (or min, max, mean, concat) if the kernel's result "
                           "combines that way, or give the input Partition: replicate")


@task("Run.Sweep", Keys(required=KERNEL_KEYS,
                        optional={**KERNEL_OPTIONS, **WAIT, "Reduce": REDUCE}),
      coordinator_only=True, kernel_on_holders=True, check=_check_sweep,
      once_per_script="put the kernels of both sweeps into one kernel with several "
                      "Outputs, or use two scripts",
      kernel_extras=KernelExtras(_keyfield_names, _keyfield_examples))
def sweep(run: TaskRun, config: dict) -> None:
    run_sweep(run, config)


def _halo_examples(script: Script, config: dict, base: dict) -> list[dict]:
    """The neighbours' rows have the type of the first input."""
    inputs = config.get("Inputs", [])
    if not inputs:
        return [base]
    return [{**base, "above": base[inputs[0]], "below": base[inputs[0]], "step": 0}]


@task("Run.Iterate", Keys(required={**KERNEL_KEYS, "Steps": COUNT},
                          optional={"Inputs": STR_LIST, "Args": DICT, "Halo": COUNT, **WAIT}),
      kernel_extras=KernelExtras(lambda script: set(HALO_ARGUMENTS), _halo_examples))
def iterate(run: TaskRun, config: dict) -> None:
    """Step a kernel over a row-partitioned array, exchanging halo rows with neighbours."""
    iterate_with_halos(run, config)
