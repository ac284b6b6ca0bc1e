"""The value types a script may use, checked before anything runs.

A string holding an `@[...]`/`@{...}` reference passes any type check: it is only known
after expansion, just before its task runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from distx.errors import TaskFailed


@dataclass(frozen=True)
class Type:
    name: str
    accepts: Any  # callable(value) -> bool
    detail: str = ""  # a bound the name does not say, shown after the value
    schema: dict = field(default_factory=dict, compare=False)
    """The same rule as a JSON Schema fragment (`distx schema`; {} accepts anything)."""

    def check(self, value: Any) -> bool:
        return is_reference(value) or self.accepts(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


MAX_SECONDS = 7 * 24 * 3600.0  # the longest Timeout or Delay: a week


def _seconds(value: Any) -> bool:
    return _number(value) and 0 < value <= MAX_SECONDS  # also refuses nan


STR = Type("a string", lambda v: isinstance(v, str), schema={"type": "string"})
NUMBER = Type("a number", _number, schema={"type": "number"})
SECONDS = Type("a positive number", _seconds,
               f"seconds, finite and at most {MAX_SECONDS:.0f} (a week)",
               schema={"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS})
COUNT = Type("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool)
             and v >= 0, schema={"type": "integer", "minimum": 0})
BOOL = Type("true or false", lambda v: isinstance(v, bool), schema={"type": "boolean"})
ANY = Type("any value", lambda v: True)
DICT = Type("a mapping", lambda v: isinstance(v, dict), schema={"type": "object"})
STR_LIST = Type("a list of strings", lambda v: isinstance(v, list)
                and all(isinstance(item, str) for item in v),
                schema={"type": "array", "items": {"type": "string"}})
FROM = Type("a role name or a rank number", lambda v: isinstance(v, (str, int))
            and not isinstance(v, bool), schema={"type": ["string", "integer"]})
REDUCTIONS = ("sum", "min", "max", "mean", "concat")
REDUCE = Type("one of sum, min, max, mean, concat", lambda v: v in REDUCTIONS,
              schema={"enum": list(REDUCTIONS)})
SEVERITIES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SEVERITY = Type("one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
                lambda v: isinstance(v, str) and v.upper() in SEVERITIES,
                schema={"type": "string", "pattern": "^(" + "|".join(  # any case, as checked
                    "".join(f"[{c}{c.lower()}]" for c in word) for word in SEVERITIES) + ")$"})
CAPTURE_TYPES = ("text", "int", "float")


def _capture_keys(value: Any) -> bool:
    def one(item: Any) -> bool:
        if isinstance(item, str):
            return True
        return (isinstance(item, list) and len(item) in (2, 3) and isinstance(item[0], int)
                and not isinstance(item[0], bool) and isinstance(item[1], str)
                and (len(item) == 2 or item[2] in CAPTURE_TYPES))
    return isinstance(value, list) and all(one(item) for item in value)


KEYS = Type("a list of names, or of [group, name] pairs or [group, name, type] triples "
            f"(type: {', '.join(CAPTURE_TYPES)})", _capture_keys,
            schema={"type": "array", "items": {"anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 2, "maxItems": 3,
                 "prefixItems": [{"type": "integer"}, {"type": "string"},
                                 {"enum": list(CAPTURE_TYPES)}]}]}})


@dataclass(frozen=True)
class Keys:
    """The keys a mapping takes: required ones, optional ones, or any key (`free`)."""

    required: dict[str, Type] = field(default_factory=dict)
    optional: dict[str, Type] = field(default_factory=dict)
    free: bool = False

    def all(self) -> dict[str, Type]:
        return {**self.required, **self.optional}


def check_expanded(key: str, written: Any, value: Any, keys: Keys) -> None:
    """After expansion, just before a task runs: `value` has `key`'s type, or the task
    fails naming the key, the type wanted and the value that came."""
    wanted = keys.all().get(key)
    if wanted is None or wanted.accepts(value):
        return
    got = f"{type(value).__name__} {value!r}"
    raise TaskFailed(f"Config key {key} must be {wanted.name}, but {written!r} gave {got}")


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and ("@[" in value or "@{" in value)


def suggestion(word: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
