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

from distx.lazy import numpy as np

MAX_EXPERIMENTS = 10_000_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT_BYTES = 1024  # a text keyfield value, in UTF-8
FOLD = "fold"  # the keyfield that Folds adds, last


class GridError(ValueError):
    """A keyfield that cannot be expanded; the message says why."""


_PARAMETER = {"type": "string", "pattern": r"@\["}
KEYFIELD_SCHEMA = {"anyOf": [
    {"type": "array", "minItems": 1, "items": {"type": ["number", "string", "boolean"]}},
    {"type": "object", "required": ["stop"], "additionalProperties": False,
     "properties": {key: {"anyOf": [{"type": "number"}, _PARAMETER]}
                    for key in ("start", "stop", "step")}},
    _PARAMETER]}
"""What keyfield_values accepts, as a JSON Schema fragment (`distx schema`); an @[name]
from Parameters or --set may stand for the values, or for a bound of a range."""


def keyfield_values(name: str, spec: Any) -> list:
    """The values of one keyfield, from a list or a `{start, stop, step}` range."""
    if not name.strip() or not name.isprintable():
        raise GridError(f"keyfield name {name!r} is not a plain name")
    if isinstance(spec, list):
        if not spec:
            raise GridError(f"keyfield '{name}' has an empty list of values")
        if len({json.dumps(value, sort_keys=True) for value in spec}) != len(spec):
            raise GridError(f"keyfield '{name}' lists the same value twice")
        for value in spec:
            if not isinstance(value, (int, float, str, bool)):
                raise GridError(f"keyfield '{name}' has value {value!r}: values must be "
                                "numbers, strings or booleans")
            _check_storable(name, value)
        _check_distinct_when_stored(name, spec)
        return list(spec)
    if isinstance(spec, dict):
        return _range_values(name, spec)
    raise GridError(f"keyfield '{name}' must be a list of values or {{start, stop, step}}")


def _check_storable(name: str, value: Any) -> None:
    """A value the results table stores exactly and a resume finds again."""
    if isinstance(value, str) and (len(value.encode()) > MAX_TEXT_BYTES or "\0" in value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise GridError(f"keyfield '{name}' has text value {shown!r}: text values are "
                        f"at most {MAX_TEXT_BYTES} bytes, without NUL characters (the table "
                        "keeps every value at the longest one's width)")
    if isinstance(value, float) and not math.isfinite(value):
        raise GridError(f"keyfield '{name}' has value {value}: values must be finite numbers")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value \
            <= INT64_MAX:
        raise GridError(f"keyfield '{name}' has value {value}, outside the 64-bit integers "
                        "the results table stores")


def _check_distinct_when_stored(name: str, values: list, described: str = "") -> None:
    """Two values that the results table would store alike (1 and 1.0 in a float column,
    1 and "1" in a text column, floats that round alike) would give experiments that share
    one id: refuse them, naming the values. `described` says where they came from."""
    stored = np.array([to_cell(value) for value in values], dtype=column_type(values))
    _, first, counts = np.unique(stored, return_index=True, return_counts=True)
    if (counts == 1).all():
        return
    position = int(first[counts > 1].min())
    twin = next(i for i in range(position + 1, len(values)) if stored[i] == stored[position])
    raise GridError(f"keyfield '{name}'{described} has values {values[position]!r} (value "
                    f"{position + 1}) and {values[twin]!r} (value {twin + 1}), stored alike as "
                    f"{from_cell(stored[position])!r}; {len(values) - len(first)} value(s) "
                    "repeat one before them, and experiments would share one id")


def column_type(values: list) -> str:
    """The numpy dtype of a keyfield's column in the results table."""
    types = set(map(type, values))   # a keyfield may have a million values: test each type once
    if all(issubclass(kind, bool) for kind in types):
        return "?"
    if all(issubclass(kind, int) and not issubclass(kind, bool) for kind in types):
        return "i8"
    if all(issubclass(kind, (int, float)) and not issubclass(kind, bool) for kind in types):
        return "f8"
    return f"S{max(len(str(v).encode()) for v in values)}"


def to_cell(value: Any) -> Any:
    """A keyfield value as a cell of its column (text as bytes)."""
    return value.encode() if isinstance(value, str) else value


def from_cell(value: Any) -> Any:
    """A table cell back as the Python value a keyfield holds."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def keyfield_count(name: str, spec: Any) -> int:
    """How many values a keyfield has, without making them (a range is checked first)."""
    if isinstance(spec, dict):
        return _range(name, spec)[3]
    return len(spec) if isinstance(spec, list) else 1


def _range(name: str, spec: dict) -> tuple[Any, Any, Any, int]:
    """A range's start, stop and step, checked, and its number of values."""
    unknown = set(spec) - {"start", "stop", "step"}
    if unknown or "stop" not in spec:
        extra = f", unknown: {', '.join(sorted(unknown))}" if unknown else ""
        raise GridError(f"keyfield '{name}' range takes start, stop and step "
                        f"(stop required{extra})")
    start, stop, step = spec.get("start", 0), spec["stop"], spec.get("step", 1)
    for key, value in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GridError(f"keyfield '{name}' range {key} must be a number, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise GridError(f"keyfield '{name}' range {key} is {value}: it must be finite")
        _check_storable(name, value)
    if step == 0:
        raise GridError(f"keyfield '{name}' range has step 0")
    count = _range_count(start, stop, step, _integers(start, stop, step))
    if count <= 0:
        raise GridError(f"keyfield '{name}' range from {start} to {stop} with step {step} "
                        "is empty (stop is excluded)")
    if count > MAX_EXPERIMENTS:
        shown = f"{count:,}" if math.isfinite(count) else "too many"
        raise GridError(f"keyfield '{name}' range has {shown} values, more than "
                        f"{MAX_EXPERIMENTS:,}")
    return start, stop, step, int(count)


def _integers(*values: Any) -> bool:
    return all(isinstance(value, int) for value in values)


def _range_values(name: str, spec: dict) -> list:
    start, stop, step, count = _range(name, spec)
    if _integers(start, stop, step):
        return list(range(start, stop, step))
    values = [round(start + i * step, 12) for i in range(count)]
    _check_distinct_when_stored(name, values, f" range from {start} to {stop} with step "
                                f"{step} (rounded to 12 decimals)")
    return values


def _range_count(start: float, stop: float, step: float, integers: bool) -> float:
    """How many values the range has (a float: may be far beyond any list's length)."""
    if integers:
        return -(-(stop - start) // step)
    quotient = (stop - start) / step
    return math.ceil(quotient - 1e-9) if math.isfinite(quotient) else math.inf


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
            self.columns[FOLD] = list(range(folds))
        self.names = list(self.columns)
        self.shape = tuple(len(values) for values in self.columns.values())
        self.size = math.prod(self.shape)
        if self.size > MAX_EXPERIMENTS:
            raise GridError(f"the grid has {self.size} experiments, more than {MAX_EXPERIMENTS}")

    def __len__(self) -> int:
        return self.size

    def value_positions(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """For many experiments at once: where each one's value is in each keyfield's list."""
        return dict(zip(self.names, np.unravel_index(np.asarray(indices, dtype=np.int64),
                                                     self.shape)))

    def keyfield_columns(self, indices: np.ndarray) -> dict[str, list]:
        """For many experiments at once: each keyfield's values, in the order of `indices`."""
        return {name: [self.columns[name][i] for i in where.tolist()]
                for name, where in self.value_positions(indices).items()}

    def ids(self, indices: np.ndarray | None = None) -> list[str]:
        """Ids of the experiments (all by default); equal to `experiment_id(keyfields)`."""
        return self.id_column(indices).astype(str).tolist()

    def id_column(self, indices: np.ndarray | None = None) -> np.ndarray:
        """The ids of `ids()` as 16-byte strings, the experiments table's `id` column.

        Each (name, value) is JSON-encoded once and the canonical texts are joined as numpy
        arrays; what remains per experiment is one SHA-256 call (a million ids: ~1 s).
        """
        indices = np.arange(self.size) if indices is None else indices
        positions = self.value_positions(indices)
        canonical = np.zeros(len(indices), dtype="S1")
        for number, name in enumerate(sorted(self.names)):
            fragments, where = _fragments_at(name, self.columns[name], positions[name])
            canonical = np.char.add(canonical,
                                    np.char.add(b"," if number else b"{", fragments)[where])
        canonical = np.char.add(canonical, b"}")
        sha256 = hashlib.sha256
        digests = b"".join([sha256(text).digest() for text in canonical.tolist()])
        heads = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 32)[:, :8]
        return np.frombuffer(heads.tobytes().hex().encode(), dtype="S16")


def _fragments_at(name: str, values: list, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fragments of the values at `where` (value positions), and where each of those is
    among them: only the values needed, when they are fewer than the keyfield has (a
    holder's slice of a keyfield with a million values)."""
    if len(where) >= len(values):
        return _fragments(name, values), where
    low, high = int(where.min()), int(where.max()) + 1
    if high - low <= len(where):   # a slice of positions: the span of values it covers
        return _fragments(name, values[low:high]), where - low
    needed, where = np.unique(where, return_inverse=True)
    return _fragments(name, [values[i] for i in needed.tolist()]), where


def _fragments(name: str, values: list) -> np.ndarray:
    """`"name":value` for each value, exactly as json.dumps writes it, in ASCII bytes
    (integers are formatted by numpy: a keyfield may have a million distinct values)."""
    key = json.dumps(name) + ":"
    if column_type(values) == "i8":
        return np.char.add(key.encode(), np.asarray(values, dtype=np.int64).astype("S20"))
    return np.array([(key + ("true" if value else "false") if isinstance(value, bool)
                      else json.dumps({name: value}, separators=(",", ":"))[1:-1]).encode()
                     for value in values])


def experiment_id(keyfields: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the keyfields as canonical JSON."""
    canonical = json.dumps(keyfields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
