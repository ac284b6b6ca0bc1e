"""Every check that needs no MPI, run by `distx validate` and before every run.

Beyond the schema (script.py): roles and ranks for the world size, what tasks refer to
(roles, arrays, kernels and their arguments, values), and coordination that can never
complete (see `coordination.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from distx.check.coordination import check_coordination, produced_values
from distx.engine.data import check_data
from distx.engine.kernels import PARTITION_NAMES, KernelLibrary
from distx.engine.tasks import TASKS, capture_keys, compile_pattern
from distx.errors import TaskFailed, UserError
from distx.results.store import EXPERIMENT_COLUMNS
from distx.script.evaluate import UnknownName, evaluate
from distx.script.expand import expand, referenced_names
from distx.script.model import COORDINATOR, Script, TaskSpec
from distx.script.roles import RolePlan, check_rank_syntax, plan_roles
from distx.script.schema import is_reference, suggestion
from distx.vocabulary import AUTOMATIC

HALO_NAMES = {"above", "below", "step"}
MAX_SIGNATURES = 16  # keyfield type combinations compiled at validation


def check_script(script: Script, size: int, overrides: dict | None = None) -> RolePlan:
    """Raise UserError for the first problem found; return the role plan for `size`."""
    check_rank_syntax(script)
    plan = plan_roles(script, size)
    overrides = overrides or {}
    published = published_names(script)
    before_run = _BeforeRun(check_data(script),
                            _values_before_run(script, overrides, published))
    sweeps = [spec for spec in script.tasks() if spec.task == "Run.Sweep"]
    if len(sweeps) > 1:
        raise script.error(sweeps[1].where, "a script runs at most one Run.Sweep",
                           "put the kernels of both sweeps into one kernel with several "
                           "Outputs, or use two scripts")
    kernels = KernelLibrary(script.kernels_dir)
    for spec in script.tasks():
        _check_task(script, plan, spec, kernels, before_run)
    _check_references(script, overrides, published)
    check_coordination(script, plan)
    return plan


def _check_task(script: Script, plan: RolePlan, spec: TaskSpec, kernels: KernelLibrary,
                before_run: _BeforeRun) -> None:
    config = spec.config
    task_type = TASKS[spec.task]
    if task_type.coordinator_only and spec.role != COORDINATOR:
        raise script.error((*spec.where, "Task"), f"{spec.task} runs on the coordinator only",
                           "move it to Roles.coordinator")
    if spec.task == "Run.AddMilestone" and config["Milestone"] in AUTOMATIC:
        raise script.error((*spec.where, "Config", "Milestone"),
                           f"milestone {config['Milestone']} is reached automatically",
                           f"choose another name (automatic: {', '.join(AUTOMATIC)})")
    if "From" in config or spec.task in ("Remote.WaitForMilestone", "Remote.GetValue"):
        _check_from(script, plan, spec)
    if spec.task == "Run.Sweep" and script.experiments is None:
        raise script.error(spec.where, "Run.Sweep needs an Experiments section",
                           "add Experiments: {Keyfields: {...}}")
    if "Outputs" in config:
        _check_output_names(script, spec)
    if spec.task == "Run.Sweep":
        _check_experiment_columns(script, spec)
        _check_sweep_reduce(script, spec)
    for position, name in enumerate(config.get("Inputs", [])):
        if is_reference(name):
            continue
        if name not in script.data:
            raise script.error((*spec.where, "Config", "Inputs", position),
                               f"no array '{name}' in Data." + suggestion(name, script.data),
                               f"declare it under Data: (arrays: {', '.join(script.data)})")
    if spec.kernel:
        _check_kernel(script, spec, kernels, before_run)
    if spec.task == "Run.Evaluate":
        _check_expression(script, spec, before_run)
    if "Pattern" in config and not is_reference(config["Pattern"]):
        _check_pattern(script, spec)


def _check_output_names(script: Script, spec: TaskSpec) -> None:
    """Outputs name values to publish or columns to write: distinct plain names."""
    seen: set[str] = set()
    for position, name in enumerate(spec.config["Outputs"]):
        where = (*spec.where, "Config", "Outputs", position)
        if is_reference(name) or not name.strip() or "/" in name or name == ".":
            raise script.error(where, f"output name {name!r} is not a plain name",
                               "use a name such as loss or accuracy")
        if name in seen:
            raise script.error(where, f"output '{name}' is listed twice", "keep one of them")
        seen.add(name)


def _check_experiment_columns(script: Script, spec: TaskSpec) -> None:
    """Keyfields and Outputs are columns of the experiments table, beside its own."""
    experiments = script.experiments
    keyfields = list(experiments.keyfields) + (["fold"] if experiments.folds else [])
    for name in keyfields:
        if name in EXPERIMENT_COLUMNS:
            raise script.error(("Experiments", "Keyfields", name), f"keyfield '{name}' has "
                               "the name of a column of the experiments table",
                               f"rename it (taken: {', '.join(EXPERIMENT_COLUMNS)})")
    outputs = spec.config.get("Outputs", ["result"])
    for position, name in enumerate(outputs):
        where = (*spec.where, "Config", "Outputs", position) if "Outputs" in spec.config \
            else (*spec.where, "Config")
        if name in EXPERIMENT_COLUMNS or name in keyfields:
            taken = "a keyfield" if name in keyfields else "a column of the experiments table"
            raise script.error(where, f"output '{name}' has the name of {taken}",
                               f"rename it (taken: {', '.join((*EXPERIMENT_COLUMNS, *keyfields))})")


def _check_expression(script: Script, spec: TaskSpec, before_run: _BeforeRun) -> None:
    """Evaluate the expression with the values known before the run (evaluation is
    bounded): a syntax error, a forbidden construct or a result beyond the evaluator's
    bounds is found now. Names that only the run publishes are left to the run."""
    expression = spec.config["Expression"]
    if not isinstance(expression, str) or is_reference(expression):
        return
    try:
        evaluate(expression, before_run.values)
    except UnknownName:
        return
    except TaskFailed as error:
        raise script.error((*spec.where, "Config", "Expression"), str(error),
                           "correct the expression") from None


def _check_pattern(script: Script, spec: TaskSpec) -> None:
    """The regex compiles (with RE2) and has the groups Keys names."""
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


def _check_sweep_reduce(script: Script, spec: TaskSpec) -> None:
    """A sweep over row-partitioned inputs runs the kernel once per block and combines the
    blocks' results: how depends on the kernel (a sum of counts, a min, a mean...), so the
    script says it; a silent `sum` gave results that change with the number of ranks."""
    rows = [name for name in spec.config.get("Inputs", [])
            if name in script.data and script.data[name].partition == "rows"]
    if rows and "Reduce" not in spec.config:
        raise script.error((*spec.where, "Config"), f"Run.Sweep over row-partitioned "
                           f"input '{rows[0]}' needs Reduce: the kernel runs once per block "
                           "of rows and Reduce combines the blocks' results",
                           "add Reduce: sum (or min, max, mean, concat) if the kernel's result "
                           "combines that way, or give the input Partition: replicate")


def _check_from(script: Script, plan: RolePlan, spec: TaskSpec) -> None:
    target = spec.config.get("From")
    where = (*spec.where, "Config", "From")
    if target is None:
        others = [name for name in script.roles if name != spec.role]
        if len(others) != 1:
            raise script.error((*spec.where, "Config"), f"{spec.task} needs From: there are "
                               f"{len(others)} other roles", f"add From: (one of "
                               f"{', '.join(others) or 'none'}, or a rank number)")
        return
    if is_reference(target):
        return
    try:
        plan.resolve(target)
    except ValueError as error:
        hint = suggestion(target, plan.ranks_of) if isinstance(target, str) else ""
        raise script.error(where, str(error) + "." + hint,
                           "name a role of Roles or a rank of this run") from None


def _check_kernel(script: Script, spec: TaskSpec, kernels: KernelLibrary,
                  before_run: _BeforeRun) -> None:
    config = spec.config
    where = (*spec.where, "Config", "Kernel")
    try:
        kernel = kernels.get(spec.kernel)
    except UserError as error:
        raise _with_task_place(script, where, error) from None
    given = set(config.get("Inputs", [])) | set(config.get("Args", {})) | set(PARTITION_NAMES)
    if spec.task == "Run.Sweep":
        keyfields = set(script.experiments.keyfields) | ({"fold"} if script.experiments.folds
                                                         else set())
        clash = keyfields & (set(config.get("Args", {})) | set(config.get("Inputs", [])))
        if clash:
            raise script.error((*spec.where, "Config"), f"{', '.join(sorted(clash))} is both "
                               "a keyfield and an input or argument", "rename one of them")
        given |= keyfields
    if spec.task == "Run.Iterate":
        given |= HALO_NAMES
    try:
        kernel.check_arguments(given)
    except UserError as error:
        raise _with_task_place(script, where, error) from None
    problem = kernel.typing_error(_example_arguments(script, spec, before_run))
    if problem:
        raise script.error(where, f"kernel {spec.kernel} cannot compile for the arguments "
                           f"this task gives: {problem}",
                           "correct the kernel, or the types of its Inputs, Args or Keyfields")


def _example_arguments(script: Script, spec: TaskSpec,
                       before_run: _BeforeRun) -> list[dict[str, Any]]:
    """Values of the types the run will give the kernel, one dict per signature: empty
    arrays of each input's dtype and rank, the Args, and each combination of keyfield
    types. Nothing when an input or argument is only known while the run goes."""
    config = spec.config
    inputs = config.get("Inputs", [])
    try:
        args = expand(config.get("Args", {}), before_run.values, {})
    except TaskFailed:
        return []
    if any(is_reference(name) for name in inputs):
        return []
    base: dict[str, Any] = {}
    for name in inputs:
        dtype, shape = before_run.arrays[name]
        base[name] = np.empty((0,) * len(shape), dtype)
    if inputs:
        shape = before_run.arrays[inputs[0]][1]
        base.update(row_offset=0, global_rows=shape[0] if shape else 0, global_shape=shape)
    base.update(args)
    if spec.task == "Run.Iterate" and inputs:
        base.update(above=base[inputs[0]], below=base[inputs[0]], step=0)
    if spec.task != "Run.Sweep":
        return [base]
    columns = script.experiments.grid().columns
    kinds = [list({type(value): value for value in values}.values())
             for values in columns.values()]
    combinations = itertools.islice(itertools.product(*kinds), MAX_SIGNATURES)
    return [{**base, **dict(zip(columns, combination))} for combination in combinations]


@dataclass
class _BeforeRun:
    """What is known of a run before it starts: each array's (dtype, shape), and the values
    that references may use then (Parameters and --set values no task publishes anew)."""

    arrays: dict[str, tuple[np.dtype, tuple[int, ...]]]
    values: dict[str, Any]


def _values_before_run(script: Script, overrides: dict,
                       published: set[str]) -> dict[str, Any]:
    return {name: value for name, value in {**script.parameters, **overrides}.items()
            if name not in published}


def _with_task_place(script: Script, where: tuple, error: UserError) -> UserError:
    """The kernel's own file and line, plus the script line of the task that names it."""
    place = f" ({error.file}" + (f", line {error.line}" if error.line else "") + ")" \
        if error.file else ""
    return script.error(where, error.what + place, error.fix)


def _check_references(script: Script, overrides: dict, published: set[str]) -> None:
    known = set(script.parameters) | set(overrides) | published
    for spec in script.tasks():
        for name in sorted(referenced_names(spec.config) - known):
            raise script.error((*spec.where, "Config"), f"@[{name}] is never published by any "
                               "task, and is no Parameter or --set value",
                               f"publish it, pass --set {name}=VALUE or write @[{name}:default]")


def published_names(script: Script) -> set[str]:
    names: set[str] = set()
    for spec in script.tasks():
        names |= produced_values(spec)
    return names
