"""Coordination that can never complete, found before anything runs.

All ranks of a role run the same sequence, so the analysis works on roles. First, every wait
must name something its target produces (a milestone it adds or reaches automatically, a
value it publishes). Then the roles are played forward together: a role advances past a
wait once its targets have produced what it waits for. If some roles stop short of the end,
they wait on each other in a cycle (or on a role that is itself stuck), and the message
lists each stuck wait with its line.
"""

from __future__ import annotations

from dataclasses import dataclass

from distx.script.model import Script, TaskSpec
from distx.script.roles import SERVE_ONLY, RolePlan
from distx.script.schema import is_reference
from distx.vocabulary import STARTED

ENDED = ("PostRun", "Finished")


@dataclass(frozen=True)
class _Wait:
    spec: TaskSpec
    kind: str          # "milestone" or "value"
    name: str
    roles: tuple[str, ...]


def produced_values(spec: TaskSpec) -> set[str]:
    """The value names a task publishes."""
    config = spec.config
    if spec.task == "Run.Publish":
        return {str(key) for key in config}
    if spec.task in ("Run.PublishFromFile", "Run.PublishFromPreviousTaskLog"):
        return {item if isinstance(item, str) else item[1] for item in config["Keys"]}
    if spec.task == "Run.Evaluate":
        return {config["Key"]}
    if spec.task == "Remote.GetValue":
        return {config.get("PublishName", config["Value"])}
    if spec.task == "Run.Kernel":
        return set(config.get("Outputs", [])) | ({config["Publish"]} if "Publish" in config
                                                  else set())
    return set()


def _produced_milestones(spec: TaskSpec) -> set[str]:
    return {spec.config["Milestone"]} if spec.task == "Run.AddMilestone" else set()


def check_coordination(script: Script, plan: RolePlan) -> None:
    sequences = {role: list(script.roles[role].sequence) if role in script.roles else []
                 for role in set(plan.role_of)}
    for sequence in sequences.values():
        for spec in sequence:
            wait = _wait_of(script, plan, spec)
            if wait is not None:
                _check_producible(script, sequences, wait)
    _check_progress(script, plan, sequences)


def _wait_of(script: Script, plan: RolePlan, spec: TaskSpec) -> _Wait | None:
    config = spec.config
    if spec.task == "Remote.WaitForMilestone":
        kind, name = "milestone", config["Milestone"]
    elif spec.task == "Remote.GetValue":
        kind, name = "value", config["Value"]
    else:
        return None
    target = config.get("From")
    if is_reference(name) or is_reference(target):
        return None
    if target is None:
        target = next(role for role in script.roles if role != spec.role)
    roles = tuple(sorted({plan.role_of[rank] for rank in plan.resolve(target)}))
    return _Wait(spec, kind, name, roles)


def _check_producible(script: Script, sequences: dict[str, list[TaskSpec]], wait: _Wait) -> None:
    for role in wait.roles:
        sequence = sequences[role]
        if wait.kind == "milestone":
            produced = set(STARTED) | set(ENDED) | \
                {name for spec in sequence for name in _produced_milestones(spec)}
        else:
            produced = {name for spec in sequence for name in produced_values(spec)}
        if wait.name not in produced:
            who = "ranks that only serve" if role == SERVE_ONLY else f"role '{role}'"
            adds = "adds" if wait.kind == "milestone" else "publishes"
            raise script.error((*wait.spec.where, "Config"),
                               f"{wait.spec.task} waits for {wait.kind} '{wait.name}' from "
                               f"{who}, which never {adds} it: the wait can never complete",
                               f"make {who} {'add' if wait.kind == 'milestone' else 'publish'}"
                               f" '{wait.name}', or fix the name")


def _check_progress(script: Script, plan: RolePlan,
                    sequences: dict[str, list[TaskSpec]]) -> None:
    position = dict.fromkeys(sequences, 0)
    milestones = {role: set(STARTED) for role in sequences}
    values: dict[str, set[str]] = {role: set() for role in sequences}
    advanced = True
    while advanced:
        advanced = False
        for role, sequence in sequences.items():
            while position[role] < len(sequence):
                spec = sequence[position[role]]
                wait = _wait_of(script, plan, spec)
                if wait is not None and not _satisfied(wait, milestones, values):
                    break
                milestones[role] |= _produced_milestones(spec)
                values[role] |= produced_values(spec)
                position[role] += 1
                advanced = True
            if position[role] == len(sequence) and not milestones[role] >= set(ENDED):
                milestones[role] |= set(ENDED)
                advanced = True
    stuck = {role: _wait_of(script, plan, sequences[role][position[role]])
             for role in sorted(sequences) if position[role] < len(sequences[role])}
    if stuck:
        cycle = _cycle(stuck)
        described = "; ".join(
            f"'{role}' (line {script.source.line(stuck[role].spec.where)}) waits for "
            f"{stuck[role].kind} '{stuck[role].name}' from {', '.join(stuck[role].roles)}"
            for role in cycle)
        others = len(stuck) - len(cycle)
        also = f" ({others} more role(s) wait on them)" if others else ""
        raise script.error(stuck[cycle[0]].spec.where, "roles wait on each other and can "
                           f"never continue: {described}{also}",
                           "reorder the sequences so that one side produces before it waits")


def _cycle(stuck: dict[str, _Wait]) -> list[str]:
    """Roles forming a cycle of waits. Every stuck role waits on a stuck role (what it
    waits for comes later in a sequence that stopped), so following waits must loop."""
    path: list[str] = []
    role = next(iter(stuck))
    while role not in path:
        path.append(role)
        role = next(target for target in stuck[role].roles if target in stuck)
    return path[path.index(role):]


def _satisfied(wait: _Wait, milestones: dict[str, set[str]], values: dict[str, set[str]]) -> bool:
    reached = milestones if wait.kind == "milestone" else values
    return all(wait.name in reached[role] for role in wait.roles)
