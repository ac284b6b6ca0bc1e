"""Which rank plays which role, for a given world size.

Rank 0 is always the coordinator. Other roles name their ranks ("1-", "1-3", "1,3,5-7", 2,
[1, 2]); a lone non-coordinator role without Ranks takes "1-". Ranks no role names only
serve (sweep tasks, value requests). With a single process every non-coordinator role
gets one virtual rank, run as a thread beside the coordinator. Data partitions live on
ranks 1..N-1 (on rank 0 when it is alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distx.script.model import COORDINATOR, Script

SERVE_ONLY = "-"
MAX_RANKS = 100_000  # the largest world a script is checked for (roles are planned per rank)


@dataclass(frozen=True)
class RolePlan:
    size: int
    role_of: tuple[str, ...]
    ranks_of: dict[str, tuple[int, ...]]

    @property
    def holders(self) -> tuple[int, ...]:
        """The ranks that hold data partitions and run sweep tasks."""
        return tuple(range(1, self.size)) if self.size > 1 else (0,)

    def resolve(self, target: str | int) -> tuple[int, ...]:
        """The ranks named by `From:` (a role name or a rank number)."""
        if isinstance(target, int) or (isinstance(target, str) and _is_number(target)):
            rank = int(target)
            if not 0 <= rank < self.size:
                raise ValueError(f"rank {rank} does not exist in a world of {self.size}")
            return (rank,)
        if target not in self.ranks_of:
            raise ValueError(f"no role named '{target}' (roles: {', '.join(self.ranks_of)})")
        return self.ranks_of[target]

    def describe(self, rank: int) -> str:
        return f"rank {rank} ({self.role_of[rank]})"


def other_roles(script: Script, role: str) -> list[str]:
    return [name for name in script.roles if name != role]


def default_target(script: Script, role: str) -> str | None:
    """Whom a wait of `role` without `From:` waits on: the one other role, if only one."""
    others = other_roles(script, role)
    return others[0] if len(others) == 1 else None


def parse_ranks(spec: Any, size: int | None) -> list[int]:
    """Ranks named by `spec`; an open range "1-" needs `size`."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 0 <= spec < MAX_RANKS:
            raise ValueError(f"rank {spec} is not a rank from 0 to {MAX_RANKS - 1:,}")
        return [spec]
    if isinstance(spec, list):
        return sorted({rank for item in spec for rank in parse_ranks(item, size)})
    ranks: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not _is_number(first) or (last and not _is_number(last)):
            raise ValueError(f"cannot read ranks '{spec}' (write e.g. \"1-\", \"1-3\", \"2,4\")")
        if max(int(first), int(last or 0)) >= MAX_RANKS:
            raise ValueError(f"ranks '{spec}' go beyond rank {MAX_RANKS - 1:,}, the largest "
                             "distx plans for")
        if not dash:
            ranks.add(int(first))
        elif last:
            if int(last) < int(first):
                raise ValueError(f"rank range '{part}' ends before it starts")
            ranks.update(range(int(first), int(last) + 1))
        else:
            ranks.update(range(int(first), size if size is not None else int(first) + 1))
    return sorted(ranks)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def plan_roles(script: Script, size: int) -> RolePlan:
    """Assign ranks to roles for `size` processes (1 means one process, virtual ranks)."""
    others = [name for name in script.roles if name != COORDINATOR]
    if size == 1:
        role_of = (COORDINATOR, *others)
        return RolePlan(len(role_of), role_of,
                        {name: (rank,) for rank, name in enumerate(role_of)})
    owner: dict[int, str] = {0: COORDINATOR}
    ranks_of: dict[str, tuple[int, ...]] = {COORDINATOR: (0,)}
    for name in others:
        role = script.roles[name]
        where = (*role.where, "Ranks")
        spec = role.ranks
        if spec is None:
            if len(others) > 1:
                raise script.error(role.where, f"role '{name}' does not say which ranks play it",
                                   "add Ranks: (e.g. \"1-3\") to every role but the coordinator")
            spec = "1-"
        try:
            ranks = parse_ranks(spec, size)
        except ValueError as error:
            raise script.error(where, str(error)) from None
        for rank in ranks:
            if rank >= size:
                raise script.error(where, f"role '{name}' names rank {rank} but the run has "
                                   f"ranks 0-{size - 1}", f"start more ranks (-n {rank + 1}) "
                                   "or change Ranks")
            if rank in owner:
                raise script.error(where, f"rank {rank} is in both '{owner[rank]}' and "
                                   f"'{name}'", "give every rank to one role only")
            owner[rank] = name
        if not ranks:
            raise script.error(where, f"role '{name}' has no ranks with -n {size}",
                               "start more ranks or change Ranks")
        ranks_of[name] = tuple(ranks)
    role_of = tuple(owner.get(rank, SERVE_ONLY) for rank in range(size))
    return RolePlan(size, role_of, ranks_of)


def check_rank_syntax(script: Script) -> None:
    """Rank specs that cannot be read, whatever the world size."""
    for name, role in script.roles.items():
        if name != COORDINATOR and role.ranks is not None:
            try:
                parse_ranks(role.ranks, None)
            except ValueError as error:
                raise script.error((*role.where, "Ranks"), str(error)) from None
