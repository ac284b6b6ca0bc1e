"""The experiment grid: PyExperimenter-style keyfields, their cartesian product, stable ids.

A keyfield is a list of values or a range `{start, stop, step}` (stop excluded). `Folds: K`
adds a keyfield `fold` = 0..K-1. Every experiment's id is derived from its keyfield values
alone, so the same experiment has the same id in every run, shard and resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

MAX_EXPERIMENTS = 10_000_000


class GridError(ValueError):
    """A keyfield that cannot be expanded; the message says why."""


KEYFIELD_SCHEMA = {"anyOf": [
    {"type": "array", "minItems": 1, "items": {"type": ["number", "string", "boolean"]}},
    {"type": "object", "required": ["stop"], "additionalProperties": False,
     "properties": {key: {"type": "number"} for key in ("start", "stop", "step")}}]}
"""What keyfield_values accepts, as a JSON Schema fragment (`distx schema`)."""


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


class Grid:
    """The experiments of a keyfield grid, without materialising them.

    Experiment `index` is the position in the cartesian product (keyfields in script
    order, the last one fastest, `fold` last). Keyfields are decoded from the index when
    needed, and ids are computed only where needed (on rank 0), so a million-experiment
    sweep costs workers nothing before their first task.
    """

    def __init__(self, keyfields: dict[str, list], folds: int | None = None) -> None:
        self.columns = dict(keyfields)
        if folds:
            self.columns["fold"] = list(range(folds))
        self.names = list(self.columns)
        self.shape = tuple(len(values) for values in self.columns.values())
        self.size = math.prod(self.shape)
        if self.size > MAX_EXPERIMENTS:
            raise GridError(f"the grid has {self.size} experiments, more than {MAX_EXPERIMENTS}")

    def __len__(self) -> int:
        return self.size

    def keyfield_columns(self, indices: np.ndarray) -> dict[str, list]:
        """For many experiments at once: each keyfield's values, in the order of `indices`."""
        positions = np.unravel_index(np.asarray(indices, dtype=np.int64), self.shape)
        return {name: [values[i] for i in where.tolist()]
                for (name, values), where in zip(self.columns.items(), positions)}

    def ids(self, indices: np.ndarray | None = None) -> list[str]:
        """Ids of the experiments (all by default); equal to `experiment_id(keyfields)`.

        Each (name, value) is JSON-encoded once; an id joins the fragments in key order.
        """
        indices = np.arange(self.size) if indices is None else indices
        order = sorted(range(len(self.names)), key=lambda k: self.names[k])
        fragments = [_fragments(self.names[k], self.columns[self.names[k]]) for k in order]
        positions = np.unravel_index(np.asarray(indices, dtype=np.int64), self.shape)
        ordered = [positions[k].tolist() for k in order]
        return [hashlib.sha256(("{" + ",".join(fragment[i] for fragment, i
                                                in zip(fragments, combo)) + "}")
                               .encode()).hexdigest()[:16]
                for combo in zip(*ordered)]


def _fragments(name: str, values: list) -> list[str]:
    """`"name":value` for each value, exactly as json.dumps writes it (ints and bools are
    formatted directly: a keyfield may have a million distinct values)."""
    key = json.dumps(name) + ":"
    return [key + ("true" if value else "false") if isinstance(value, bool)
            else key + str(value) if isinstance(value, int)
            else json.dumps({name: value}, separators=(",", ":"))[1:-1]
            for value in values]


def experiment_id(keyfields: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the keyfields as canonical JSON."""
    canonical = json.dumps(keyfields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
