"""The experiment grid: PyExperimenter-style keyfields, their cartesian product, stable ids.

A keyfield is a list of values or a range `{start, stop, step}` (stop excluded). `Folds: K`
adds a keyfield `fold` = 0..K-1. Every experiment's id is derived from its keyfield values
alone, so the same experiment has the same id in every run, shard and resume.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

MAX_EXPERIMENTS = 10_000_000


class GridError(ValueError):
    """A keyfield that cannot be expanded; the message says why."""


@dataclass(frozen=True)
class Experiment:
    index: int
    id: str
    keyfields: dict[str, Any]


def keyfield_values(name: str, spec: Any) -> list:
    """The values of one keyfield, from a list or a `{start, stop, step}` range."""
    if isinstance(spec, list):
        if not spec:
            raise GridError(f"keyfield '{name}' has an empty list of values")
        if len({json.dumps(value, sort_keys=True) for value in spec}) != len(spec):
            raise GridError(f"keyfield '{name}' lists the same value twice")
        for value in spec:
            if not isinstance(value, (int, float, str, bool)):
                raise GridError(f"keyfield '{name}' has value {value!r}: values must be "
                                "numbers, strings or booleans")
        return list(spec)
    if isinstance(spec, dict):
        return _range_values(name, spec)
    raise GridError(f"keyfield '{name}' must be a list of values or {{start, stop, step}}")


def _range_values(name: str, spec: dict) -> list:
    unknown = set(spec) - {"start", "stop", "step"}
    if unknown or "stop" not in spec:
        extra = f", unknown: {', '.join(sorted(unknown))}" if unknown else ""
        raise GridError(f"keyfield '{name}' range takes start, stop and step "
                        f"(stop required{extra})")
    start, stop, step = spec.get("start", 0), spec["stop"], spec.get("step", 1)
    for key, value in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GridError(f"keyfield '{name}' range {key} must be a number, not {value!r}")
    if step == 0:
        raise GridError(f"keyfield '{name}' range has step 0")
    count = math.ceil((stop - start) / step - 1e-9)
    if count <= 0:
        raise GridError(f"keyfield '{name}' range from {start} to {stop} with step {step} "
                        "is empty (stop is excluded)")
    if count > MAX_EXPERIMENTS:
        raise GridError(f"keyfield '{name}' range has {count} values, more than {MAX_EXPERIMENTS}")
    if all(isinstance(value, int) for value in (start, stop, step)):
        return list(range(start, stop, step))
    return [round(start + i * step, 12) for i in range(count)]


def grid_size(keyfields: dict[str, list], folds: int | None) -> int:
    return math.prod(len(values) for values in keyfields.values()) * (folds or 1)


def build_experiments(keyfields: dict[str, list], folds: int | None = None) -> list[Experiment]:
    """The cartesian product of the keyfields (in script order), each with a stable id."""
    columns = dict(keyfields)
    if folds:
        columns["fold"] = list(range(folds))
    size = grid_size(keyfields, folds)
    if size > MAX_EXPERIMENTS:
        raise GridError(f"the grid has {size} experiments, more than {MAX_EXPERIMENTS}")
    names = list(columns)
    return [
        Experiment(index, experiment_id(dict(zip(names, combo))), dict(zip(names, combo)))
        for index, combo in enumerate(itertools.product(*columns.values()))
    ]


def experiment_id(keyfields: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the keyfields as canonical JSON."""
    canonical = json.dumps(keyfields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
