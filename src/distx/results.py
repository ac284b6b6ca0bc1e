"""The results file: one HDF5 file per run, written by rank 0 alone.

Layout (documented in README.md):
    /                    attrs: format, format_version, name, run_id, state, exit_code,
                         started, ended, world_size, command_line, script_sha256, versions
    /script              the script text (scalar string), attrs: path, sha256
    /provenance/hosts    host name of every rank
    /experiments         table: id, index, keyfields, status, attempts, rank, host, start,
                         end, error, one float64 column per output
    /experiment_arrays/<output>/<id>   array outputs, linked by experiment id
    /milestones          table: rank, role, name, time, detail
    /values              table: rank, role, key, time, kind, value (JSON or dataset path)
    /value_arrays/rank<r>/<key>[.<n>]  published arrays
    /tasks               table: rank, role, index, task, status, start, end, error
    /logs                table: rank, role, index, time, severity, message
    /files/rank<r>/<name>  kept files as uint8 datasets, attrs: role, index, source
Rows are appended as they arrive and the file is flushed at most every FLUSH_SECONDS and at
every state change, so a reader (h5py, pandas, h5dump, `distx show`) sees the run so far.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distx.errors import UserError
from distx.grid import Experiment

FORMAT = "distx-results"
FORMAT_VERSION = 1
FLUSH_SECONDS = 0.5
TEXT = h5py.string_dtype()
STATUSES = ("created", "running", "done", "error")

MILESTONES = np.dtype([("rank", "i4"), ("role", TEXT), ("name", TEXT), ("time", "f8"),
                       ("detail", TEXT)])
VALUES = np.dtype([("rank", "i4"), ("role", TEXT), ("key", TEXT), ("time", "f8"),
                   ("kind", TEXT), ("value", TEXT)])
TASKS = np.dtype([("rank", "i4"), ("role", TEXT), ("index", "i4"), ("task", TEXT),
                  ("status", TEXT), ("start", "f8"), ("end", "f8"), ("error", TEXT)])
LOGS = np.dtype([("rank", "i4"), ("role", TEXT), ("index", "i4"), ("time", "f8"),
                 ("severity", TEXT), ("message", TEXT)])


class AppendTable:
    """A one-dimensional compound dataset that grows by appended rows."""

    def __init__(self, file: h5py.File, name: str, dtype: np.dtype) -> None:
        self.dataset = file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                                           chunks=(1024,))

    def append(self, rows: list[tuple]) -> None:
        if not rows:
            return
        start = self.dataset.shape[0]
        self.dataset.resize((start + len(rows),))
        self.dataset[start:] = np.array(rows, dtype=self.dataset.dtype)


class ResultsFile:
    """Rank 0's writer. Every method leaves the file consistent at the next flush."""

    def __init__(self, path: Path, file: h5py.File) -> None:
        self.path = path
        self.file = file
        self.milestones = AppendTable(file, "milestones", MILESTONES)
        self.values = AppendTable(file, "values", VALUES)
        self.tasks = AppendTable(file, "tasks", TASKS)
        self.logs = AppendTable(file, "logs", LOGS)
        self.table: ExperimentTable | None = None
        self._array_counts: dict[str, int] = {}
        self._last_flush = time.monotonic()

    @classmethod
    def create(cls, path: Path, overwrite: bool, attributes: dict[str, Any], script_text: str,
               script_path: str, hosts: list[str]) -> ResultsFile:
        if path.exists() and not overwrite:
            raise UserError(f"results file {path} already exists",
                            fix="pass --overwrite to replace it, or --output to write elsewhere")
        path.parent.mkdir(parents=True, exist_ok=True)
        # The original superblock format: a file whose writer was killed still opens. With
        # libver="latest" HDF5 marks the file open-for-write and refuses to open it after a
        # crash until `h5clear` is run.
        file = h5py.File(path, "w")
        file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "state": "Running", "exit_code": -1, **attributes})
        script = file.create_dataset("script", data=script_text, dtype=TEXT)
        script.attrs.update({"path": script_path, "sha256": attributes["script_sha256"]})
        file.create_dataset("provenance/hosts", data=np.array(hosts, dtype=object), dtype=TEXT)
        results = cls(path, file)
        file.flush()
        return results

    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.table is not None:
            self.table.write_dirty()
        self.file.flush()
        self._last_flush = time.monotonic()

    def close(self, state: str, exit_code: int) -> None:
        self.file.attrs.update({"state": state, "exit_code": exit_code, "ended": time.time()})
        self.flush()
        self.file.close()

    # ----- records from every rank -------------------------------------------------------
    def record_milestone(self, rank: int, role: str, name: str, when: float,
                         detail: str) -> None:
        self.milestones.append([(rank, role, name, when, detail)])
        if name in ("Errored", "Cancelled", "Finished"):
            self.flush()

    def record_value(self, rank: int, record: dict) -> None:
        kind, text = self._encode_value(rank, record["key"], record["value"])
        self.values.append([(rank, record["role"], record["key"], record["time"], kind, text)])

    def _encode_value(self, rank: int, key: str, value: Any) -> tuple[str, str]:
        if isinstance(value, np.ndarray):
            base = f"value_arrays/rank{rank}/{key.replace('/', '_')}"
            count = self._array_counts.get(base, 0)
            self._array_counts[base] = count + 1
            name = base if count == 0 else f"{base}.{count}"
            self.file.create_dataset(name, data=value)
            return "array", "/" + name
        try:
            return "json", json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            return "text", repr(value)

    def record_task(self, rank: int, record: dict) -> None:
        self.tasks.append([(rank, record["role"], record["index"], record["task"],
                            record["status"], record["start"], record["end"],
                            record["error"])])
        self.logs.append([(rank, record["role"], record["index"], when, severity, text)
                          for when, severity, text in record["log"]])
        if record["status"] == "error":
            self.flush()

    def record_file(self, rank: int, record: dict) -> None:
        name = f"files/rank{rank}/{record['name']}"
        if name in self.file:
            del self.file[name]
        dataset = self.file.create_dataset(name, data=record["data"])
        dataset.attrs.update({"role": record["role"], "index": record["index"],
                              "source": record["source"]})

    # ----- experiments ---------------------------------------------------------------------
    def experiments(self, experiments: list[Experiment], outputs: list[str]) -> ExperimentTable:
        self.table = ExperimentTable(self.file, experiments, outputs)
        self.flush()
        return self.table


class ExperimentTable:
    """The experiments table, kept in memory on rank 0 and written row ranges at a time."""

    def __init__(self, file: h5py.File, experiments: list[Experiment],
                 outputs: list[str]) -> None:
        self.file = file
        self.outputs = outputs
        keyfields = list(experiments[0].keyfields) if experiments else []
        columns = [("id", "S16"), ("index", "i8")]
        columns += [(name, _column_type([e.keyfields[name] for e in experiments]))
                    for name in keyfields]
        columns += [("status", "S8"), ("attempts", "i4"), ("rank", "i4"), ("host", "S64"),
                    ("start", "f8"), ("end", "f8"), ("error", TEXT)]
        columns += [(name, "f8") for name in outputs]
        self.rows = np.zeros(len(experiments), dtype=np.dtype(columns))
        self.rows["id"] = [e.id for e in experiments]
        self.rows["index"] = [e.index for e in experiments]
        for name in keyfields:
            self.rows[name] = [_cell(e.keyfields[name]) for e in experiments]
        self.rows["status"] = b"created"
        self.rows["rank"] = -1
        self.rows["error"] = ""
        for name in ("start", "end", *outputs):
            self.rows[name] = np.nan
        self.dataset = file.create_dataset("experiments", data=self.rows, maxshape=(None,),
                                           chunks=True)
        self.dataset.attrs["keyfields"] = keyfields
        self.dataset.attrs["outputs"] = outputs
        self._dirty: tuple[int, int] | None = None

    def update(self, index: int, **fields: Any) -> None:
        row = self.rows[index]
        for name, value in fields.items():
            row[name] = value
        low, high = self._dirty or (index, index + 1)
        self._dirty = (min(low, index), max(high, index + 1))

    def set_output_array(self, experiment_id: str, output: str, array: np.ndarray) -> None:
        name = f"experiment_arrays/{output}/{experiment_id}"
        if name in self.file:
            del self.file[name]
        self.file.create_dataset(name, data=array)

    def write_dirty(self) -> None:
        if self._dirty is not None:
            low, high = self._dirty
            self.dataset[low:high] = self.rows[low:high]
            self._dirty = None

    def counts(self) -> dict[str, int]:
        statuses, numbers = np.unique(self.rows["status"], return_counts=True)
        return {status.decode(): int(number) for status, number in zip(statuses, numbers)}


def _column_type(values: list) -> str:
    if all(isinstance(v, bool) for v in values):
        return "?"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "i8"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "f8"
    return f"S{max(len(str(v).encode()) for v in values)}"


def _cell(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def open_results(path: str | Path) -> h5py.File:
    """Open a results file for reading, or explain why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", file=str(path), fix="give the path of a results file")
    try:
        file = h5py.File(path, "r", locking=False)
    except OSError as error:
        raise UserError(f"not a readable HDF5 file ({error})", file=str(path)) from None
    if file.attrs.get("format") != FORMAT:
        file.close()
        raise UserError("not a distx results file (no format attribute 'distx-results')",
                        file=str(path), fix="give a file written by distx run")
    return file
