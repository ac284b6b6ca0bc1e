"""`distx schema`: a JSON Schema of the script format, for editors and other tools.

Generated from the tables validation itself uses: the `Keys` of each part of a script
(script/model.py), the `Type` of each key with its JSON Schema fragment (script/schema.py),
the keyfield forms (script/grid.py) and every task's Config keys from the task catalogue
(engine/tasks.py). Validation stays the authority (it also checks what a schema cannot say:
kernels, ranks, coordination); the schema gives an editor completion and early marks.
"""

from __future__ import annotations

from typing import Any

from distx.engine.tasks import TASKS
from distx.script import model
from distx.script.grid import KEYFIELD_SCHEMA
from distx.script.schema import ANY, STR, Keys, Type

DIALECT = "https://json-schema.org/draft/2020-12/schema"
REFERENCE = {"type": "string", "pattern": r"@[\[{]"}
"""A value holding an @[...] or @{...} reference: known only when its task runs."""


def script_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a distx script."""
    sequence = {"type": "array", "items": {"$ref": "#/$defs/task"}}
    top = _object(model.TOP_LEVEL, {
        "Data": {"type": "object", "additionalProperties": {"$ref": "#/$defs/array"}},
        "Experiments": _object(model.EXPERIMENTS, {
            "Keyfields": {"type": "object", "minProperties": 1,
                          "additionalProperties": KEYFIELD_SCHEMA}}),
        "Roles": {"type": "object", "required": [model.COORDINATOR],
                  "additionalProperties": {"$ref": "#/$defs/role"}},
        "Sequence": sequence})
    return {
        "$schema": DIALECT,
        "title": "distx script",
        "description": "An experiment for `distx run` (README: The script).",
        **top,
        "$defs": {
            "array": _object(model.DATA_ITEM, {"Generate": _object(model.GENERATE)}),
            "role": {"anyOf": [{"type": "null"},
                               _object(model.ROLE, {"Sequence": sequence})]},
            "task": _task_item(),
        },
    }


def _task_item() -> dict[str, Any]:
    """A Sequence item: `Task` one of the catalogue, `Config` checked per task type."""
    item = _object(model.TASK_ITEM, {"Task": {"enum": sorted(TASKS)}})
    item["allOf"] = [
        {"if": {"properties": {"Task": {"const": name}}, "required": ["Task"]},
         "then": {"properties": {"Config": _object(task_type.keys)}}}
        for name, task_type in sorted(TASKS.items())]
    return item


def _object(keys: Keys, nested: dict[str, dict] | None = None) -> dict[str, Any]:
    """An object with the keys of `keys`; `nested` replaces the schema of some keys."""
    nested = nested or {}
    properties = {name: nested.get(name, _value(kind)) for name, kind in keys.all().items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if keys.required:
        schema["required"] = list(keys.required)
    if not keys.free:
        schema["additionalProperties"] = False
    return schema


def _value(kind: Type) -> dict[str, Any]:
    """A key's schema: its type's fragment, or a reference filled in at run time."""
    if kind is ANY or kind is STR:
        return dict(kind.schema)
    return {"anyOf": [kind.schema, REFERENCE]}
