"""The experiment script: loading, schema checks, and the objects the run is built from.

`load_script` returns a `Script` or raises `UserError` naming the file, the YAML line, what
is wrong and the fix. Checks that need the task catalogue (task names and their Config) or
more than the text (kernels, ranks for a world size, coordination) live in check/.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distx.errors import UserError
from distx.script import grid
from distx.script.schema import (
    BOOL,
    COUNT,
    DICT,
    NUMBER,
    SECONDS,
    STR,
    Keys,
    Type,
    is_reference,
    suggestion,
)
from distx.script.source import Source, Where

COORDINATOR = "coordinator"
SEQUENCE_LIST = Type("a list of tasks", lambda v: isinstance(v, list),
                     schema={"type": "array"})
RANKS = Type("a rank, a list of ranks, or text like \"1-\", \"1-3\", \"1,3,5-7\"",
             lambda v: isinstance(v, (str, list)) or (isinstance(v, int)
                                                       and not isinstance(v, bool)),
             schema={"type": ["string", "integer", "array"]})
PARTITIONS = ("rows", "replicate")
PARTITION = Type("rows or replicate", lambda v: v in PARTITIONS,
                 schema={"enum": list(PARTITIONS)})
DISTRIBUTIONS = ("uniform", "normal", "integers")
DISTRIBUTION = Type("uniform, normal or integers", lambda v: v in DISTRIBUTIONS,
                    schema={"enum": list(DISTRIBUTIONS)})
MAX_DIMENSIONS = 32  # as HDF5 (numpy allows 64)
SHAPE = Type("a list of whole numbers >= 1", lambda v: isinstance(v, list)
             and 0 < len(v) <= MAX_DIMENSIONS and all(
                 isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v),
             f"1 to {MAX_DIMENSIONS} dimensions",
             schema={"type": "array", "minItems": 1, "maxItems": MAX_DIMENSIONS,
                     "items": {"type": "integer", "minimum": 1}})
ORDER = Type("a finite number", lambda v: isinstance(v, (int, float))
             and not isinstance(v, bool) and math.isfinite(v), schema={"type": "number"})

TOP_LEVEL = Keys(
    required={"Name": STR},
    optional={"Version": COUNT, "Description": STR, "Distributed": BOOL, "Output": STR,
              "Timeout": SECONDS, "Kernels": STR, "Parameters": DICT, "Data": DICT,
              "Experiments": DICT, "Roles": DICT, "Sequence": SEQUENCE_LIST},
)
ROLE = Keys(optional={"Ranks": RANKS, "Sequence": SEQUENCE_LIST})
TASK_ITEM = Keys(required={"Task": STR}, optional={"Config": DICT, "Order": ORDER})
DATA_ITEM = Keys(optional={"Generate": DICT, "File": STR, "Partition": PARTITION})
GENERATE = Keys(required={"Distribution": DISTRIBUTION, "Shape": SHAPE},
                optional={"Seed": COUNT, "DType": STR, "Low": NUMBER, "High": NUMBER,
                          "Mean": NUMBER, "Std": NUMBER})
EXPERIMENTS = Keys(required={"Keyfields": DICT}, optional={"Folds": COUNT, "Retries": COUNT})
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class TaskSpec:
    task: str
    config: dict
    where: Where
    role: str
    index: int

    @property
    def kernel(self) -> str | None:
        """The kernel the task names; None without one or when a reference names it."""
        name = self.config.get("Kernel")
        return name if isinstance(name, str) and not is_reference(name) else None


@dataclass(frozen=True)
class RoleSpec:
    name: str
    ranks: Any  # the Ranks value as written, None when not given
    sequence: tuple[TaskSpec, ...]
    where: Where


@dataclass(frozen=True)
class DataSpec:
    name: str
    generate: dict | None
    file: str | None
    partition: str
    where: Where


@dataclass(frozen=True)
class ExperimentsSpec:
    keyfields: dict[str, list]
    folds: int | None
    retries: int

    def grid(self) -> grid.Grid:
        return grid.Grid(self.keyfields, self.folds)


@dataclass
class Script:
    source: Source
    name: str
    distributed: bool
    output: str
    timeout: float
    kernels_dir: Path
    parameters: dict
    data: dict[str, DataSpec]
    experiments: ExperimentsSpec | None
    roles: dict[str, RoleSpec]

    @property
    def path(self) -> Path:
        return Path(self.source.file)

    @property
    def folder(self) -> Path:
        return self.path.resolve().parent

    @property
    def text(self) -> str:
        return self.source.text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.text.encode()).hexdigest()

    def tasks(self) -> list[TaskSpec]:
        return [spec for role in self.roles.values() for spec in role.sequence]

    def error(self, where: Where, what: str, fix: str | None = None) -> UserError:
        return self.source.error(where, what, fix)


def load_script(path: str | Path) -> Script:
    return parse_script(Source.read(path))


def parse_script(source: Source) -> Script:
    document = source.data
    if not isinstance(document, dict):
        raise source.error((), "the script must be a mapping of keys such as Name and Roles",
                           "start from one of the examples in jobs/")
    check_keys(source, document, TOP_LEVEL, ())
    distributed = document.get("Distributed", False)
    if distributed and "Parameters" in document:
        raise source.error(("Parameters",), "a Distributed script may not define Parameters",
                           "remove Parameters (as in ELCM); pass values with --set NAME=VALUE")
    if "Roles" in document and "Sequence" in document:
        raise source.error(("Sequence",), "a script has either Roles or a top-level Sequence",
                           "move the Sequence under Roles.coordinator")
    roles = _parse_roles(source, document)
    folder = Path(source.file).resolve().parent
    return Script(
        source=source,
        name=document["Name"],
        distributed=distributed,
        output=document.get("Output", f"{document['Name']}.h5"),
        timeout=float(document.get("Timeout", DEFAULT_TIMEOUT)),
        kernels_dir=folder / document.get("Kernels", "kernels"),
        parameters=dict(document.get("Parameters", {})),
        data=_parse_data(source, document.get("Data", {})),
        experiments=_parse_experiments(source, document.get("Experiments")),
        roles=roles,
    )


def check_keys(source: Source, mapping: Any, keys: Keys, where: Where) -> None:
    """Unknown keys (with a suggestion), missing keys and wrong types in `mapping`."""
    if not isinstance(mapping, dict):
        raise source.error(where, "must be a mapping")
    allowed = keys.all()
    for key, value in mapping.items():
        if key not in allowed:
            if keys.free:
                continue
            raise source.error((*where, key), f"unknown key '{key}'." + suggestion(key, allowed),
                               f"use one of: {', '.join(allowed)}")
        if not allowed[key].check(value):
            detail = f" ({allowed[key].detail})" if allowed[key].detail else ""
            raise source.error((*where, key), f"'{key}' must be {allowed[key].name}, "
                               f"not {value!r}{detail}")
    for key in keys.required:
        if key not in mapping:
            raise source.error(where, f"'{key}' is missing", f"add {key}: ...")


def _parse_roles(source: Source, document: dict) -> dict[str, RoleSpec]:
    if "Sequence" in document:
        return {COORDINATOR: _parse_role(source, COORDINATOR, {"Sequence": document["Sequence"]},
                                         ())}
    roles_doc = document.get("Roles")
    if not roles_doc:
        raise source.error((), "the script has no tasks",
                           "add Roles (with a coordinator role) or a top-level Sequence")
    if COORDINATOR not in roles_doc:
        raise source.error(("Roles",), "there is no 'coordinator' role",
                           "add Roles.coordinator: rank 0 always runs it")
    roles = {}
    for name, role_doc in roles_doc.items():
        if not isinstance(name, str):
            raise source.error(("Roles", name), "a role name must be text")
        roles[name] = _parse_role(source, name, role_doc, ("Roles", name))
    return roles


def _parse_role(source: Source, name: str, role_doc: Any, where: Where) -> RoleSpec:
    check_keys(source, role_doc if role_doc is not None else {}, ROLE, where)
    role_doc = role_doc or {}
    if name == COORDINATOR and role_doc.get("Ranks") not in (None, 0, "0", [0]):
        raise source.error((*where, "Ranks"), "the coordinator is always rank 0",
                           "remove Ranks from the coordinator role")
    items = role_doc.get("Sequence", [])
    sequence_where = (*where, "Sequence")
    parsed = []
    for position, item in enumerate(items):
        item_where = (*sequence_where, position)
        check_keys(source, item, TASK_ITEM, item_where)
        task = item["Task"]
        config = item.get("Config") or {}
        parsed.append((item.get("Order", position), position, task, config, item_where))
    parsed.sort(key=lambda entry: (entry[0], entry[1]))
    sequence = tuple(TaskSpec(task, config, item_where, name, index)
                     for index, (_, _, task, config, item_where) in enumerate(parsed))
    return RoleSpec(name, role_doc.get("Ranks"), sequence, where)


def _parse_data(source: Source, data_doc: Any) -> dict[str, DataSpec]:
    if not isinstance(data_doc, dict):
        raise source.error(("Data",), "must be a mapping of array names")
    specs = {}
    for name, item in data_doc.items():
        where = ("Data", name)
        check_keys(source, item, DATA_ITEM, where)
        if ("Generate" in item) == ("File" in item):
            raise source.error(where, f"array '{name}' needs exactly one of Generate or File")
        if "Generate" in item:
            check_keys(source, item["Generate"], GENERATE, (*where, "Generate"))
        if "Partition" not in item:
            # No default: `rows` changes a non-additive kernel's result with the number of
            # ranks, `replicate` costs memory on every holder; only the script knows.
            raise source.error(where, f"array '{name}' does not say how it is partitioned",
                               "add Partition: rows (each holder gets a block of rows; "
                               "kernels see only their block) or Partition: replicate "
                               "(every holder gets the whole array)")
        specs[name] = DataSpec(name, item.get("Generate"), item.get("File"),
                               item["Partition"], where)
    return specs


def _keyfield(source: Source, name: Any, read: Callable[[str, Any], Any], spec: Any) -> Any:
    """`read(name, spec)` of one keyfield, its GridError as the script's error."""
    try:
        return read(str(name), spec)
    except grid.GridError as error:
        raise source.error(("Experiments", "Keyfields", name), str(error)) from None


def _parse_experiments(source: Source, doc: Any) -> ExperimentsSpec | None:
    if doc is None:
        return None
    where = ("Experiments",)
    check_keys(source, doc, EXPERIMENTS, where)
    for name in doc["Keyfields"]:
        if name == "fold" and doc.get("Folds"):
            raise source.error((*where, "Keyfields", name),
                               "keyfield 'fold' is added by Folds", "rename the keyfield")
    if not doc["Keyfields"]:
        raise source.error((*where, "Keyfields"), "no keyfields", "add at least one keyfield")
    folds = doc.get("Folds")
    if folds is not None and folds < 2:
        raise source.error((*where, "Folds"), "Folds must be at least 2")
    # The size first, from the counts alone: values are made only for a grid that fits.
    counts = {name: _keyfield(source, name, grid.keyfield_count, spec)
              for name, spec in doc["Keyfields"].items()}
    size = math.prod(counts.values()) * (folds or 1)
    if size > grid.MAX_EXPERIMENTS:
        raise source.error((*where, "Keyfields"), f"the grid has {size:,} experiments, more "
                           f"than the {grid.MAX_EXPERIMENTS:,} one results file holds",
                           "split the sweep into several scripts or use fewer values")
    keyfields = {str(name): _keyfield(source, name, grid.keyfield_values, spec)
                 for name, spec in doc["Keyfields"].items()}
    return ExperimentsSpec(keyfields, folds, doc.get("Retries", 0))

