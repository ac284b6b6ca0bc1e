"""Every check that needs no MPI, run by `distx validate` and before every run.

Beyond the schema (script/model.py): task names and their Config (from the task catalogue,
engine/tasks.py), roles and ranks for the world size, what tasks refer to (roles, arrays,
kernels and their arguments, values), and coordination that can never complete (see
`coordination.py`). Whatever is particular to one task type is declared in the catalogue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from distx.check.coordination import check_coordination, produced_values
from distx.engine.data import Partition, check_data
from distx.engine.kernels import PARTITION_NAMES, KernelLibrary, kernel_arguments
from distx.engine.tasks import TASKS
from distx.errors import TaskFailed, UserError
from distx.script.evaluate import UnknownName, evaluate
from distx.script.expand import expand, referenced_names
from distx.script.model import COORDINATOR, Script, TaskSpec, check_keys
from distx.script.roles import RolePlan, check_rank_syntax, other_roles, plan_roles
from distx.script.schema import is_reference, suggestion


def check_script(script: Script, size: int, overrides: dict | None = None) -> RolePlan:
    """Raise UserError for the first problem found; return the role plan for `size`."""
    check_task_configs(script)
    check_rank_syntax(script)
    plan = plan_roles(script, size)
    overrides = overrides or {}
    published = published_names(script)
    before_run = _BeforeRun(check_data(script),
                            _values_before_run(script, overrides, published))
    _check_once_per_script(script)
    kernels = KernelLibrary(script.kernels_dir)
    for spec in script.tasks():
        _check_task(script, plan, spec, kernels, before_run)
    _check_references(script, overrides, published)
    check_coordination(script, plan)
    return plan


def check_task_configs(script: Script) -> None:
    """Every task names a task type of the catalogue and gives the Config it takes."""
    for spec in script.tasks():
        if spec.task not in TASKS:
            raise script.error((*spec.where, "Task"), f"unknown task '{spec.task}'."
                               + suggestion(spec.task, TASKS),
                               f"use one of: {', '.join(TASKS)}")
        check_keys(script.source, spec.config, TASKS[spec.task].keys,
                   (*spec.where, "Config"))


def _check_once_per_script(script: Script) -> None:
    counts: Counter[str] = Counter()
    for spec in script.tasks():
        counts[spec.task] += 1
        fix = TASKS[spec.task].once_per_script
        if fix and counts[spec.task] == 2:
            raise script.error(spec.where, f"a script runs at most one {spec.task}", fix)


def _check_task(script: Script, plan: RolePlan, spec: TaskSpec, kernels: KernelLibrary,
                before_run: _BeforeRun) -> None:
    config = spec.config
    task_type = TASKS[spec.task]
    if task_type.coordinator_only and spec.role != COORDINATOR:
        raise script.error((*spec.where, "Task"), f"{spec.task} runs on the coordinator only",
                           "move it to Roles.coordinator")
    if "From" in config or task_type.waits_for(config) is not None:
        _check_from(script, plan, spec)
    task_type.check(script, spec)
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


def _check_from(script: Script, plan: RolePlan, spec: TaskSpec) -> None:
    target = spec.config.get("From")
    where = (*spec.where, "Config", "From")
    if target is None:
        others = other_roles(script, spec.role)
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
    extras = TASKS[spec.task].kernel_extras
    if extras is not None:
        given |= extras.names(script)
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
    partitions = []
    for name in inputs:
        dtype, shape = before_run.arrays[name]
        partitions.append(Partition(name, np.empty((0,) * len(shape), dtype), 0, shape,
                                    script.data[name].partition))
    base = kernel_arguments(partitions, args)
    extras = TASKS[spec.task].kernel_extras
    return [base] if extras is None else extras.examples(script, config, base)


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
