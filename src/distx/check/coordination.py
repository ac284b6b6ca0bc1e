"""Coordination that can never complete, found before anything runs.

All ranks of a role run the same sequence, so the analysis works on roles. First, every wait
must name something its target produces (a milestone it adds or reaches automatically, a
value it publishes). Then the roles are played forward together: a role advances past a
wait once its targets have produced what it waits for. If some roles stop short of the end,
they wait on each other in a cycle (or on a role that is itself stuck), and the message
lists each stuck wait with its line. What each task type publishes, adds and waits for is
declared in the task catalogue (engine/tasks.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from distx.engine.tasks import MILESTONE, TASKS
from distx.script.model import Script, TaskSpec
from distx.script.roles import SERVE_ONLY, RolePlan, default_target
from distx.script.schema import is_reference
from distx.vocabulary import POST_RUN, STARTED, RunState

ENDED = (POST_RUN, RunState.FINISHED.value)
"""What every role reaches once its sequence is done."""


@dataclass(frozen=True)
class _Wait:
    spec: TaskSpec
    kind: str          # tasks.MILESTONE or tasks.VALUE
    name: str
    roles: tuple[str, ...]


def produced_values(spec: TaskSpec) -> set[str]:
    """The value names a task publishes."""
    return TASKS[spec.task].publishes(spec.config)


def _produced_milestones(spec: TaskSpec) -> set[str]:
    return TASKS[spec.task].adds_milestones(spec.config)


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
    wait = TASKS[spec.task].waits_for(spec.config)
    if wait is None or is_reference(wait.name) or is_reference(wait.target):
        return None
    target = default_target(script, spec.role) if wait.target is None else wait.target
    roles = tuple(sorted({plan.role_of[rank] for rank in plan.resolve(target)}))
    return _Wait(spec, wait.kind, wait.name, roles)


def _check_producible(script: Script, sequences: dict[str, list[TaskSpec]], wait: _Wait) -> None:
    for role in wait.roles:
        sequence = sequences[role]
        if wait.kind == MILESTONE:
            produced = set(STARTED) | set(ENDED) | \
                {name for spec in sequence for name in _produced_milestones(spec)}
        else:
            produced = {name for spec in sequence for name in produced_values(spec)}
        if wait.name not in produced:
            who = "ranks that only serve" if role == SERVE_ONLY else f"role '{role}'"
            adds = "adds" if wait.kind == MILESTONE else "publishes"
            raise script.error((*wait.spec.where, "Config"),
                               f"{wait.spec.task} waits for {wait.kind} '{wait.name}' from "
                               f"{who}, which never {adds} it: the wait can never complete",
                               f"make {who} {'add' if wait.kind == MILESTONE else 'publish'}"
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
    reached = milestones if wait.kind == MILESTONE else values
    return all(wait.name in reached[role] for role in wait.roles)
