"""The results file: one HDF5 file per experiment, written by rank 0 alone, over one or more runs.

Layout (documented in README.md):
    /                    attrs: format, format_version, name, run_id, state, exit_code,
                         started, ended, world_size, command_line, script_sha256,
                         fingerprint_script/_kernels/_data, versions (of the latest run)
    /runs                table: run, run_id, started, ended, state, exit_code, world_size,
                         command_line (a row per run: the first and every --resume)
    /script              the script text (scalar string), attrs: path, sha256
    /provenance/hosts    host name of every rank (latest run)
    /experiments         table: id, index, keyfields, status, attempts, rank, host, start,
                         end, error, one float64 column per output
    /attempts            table: run, id, part, attempt, rank, host, start, end, status, error
    /experiment_arrays/<output>/<id>   array outputs, linked by experiment id
    /milestones          table: run, rank, role, name, time, detail
    /values              table: run, rank, role, key, time, kind, value (JSON or dataset path)
    /value_arrays/run<n>/rank<r>/<key>[.<k>]  published arrays
    /tasks               table: run, rank, role, index, task, status, start, end, error
    /logs                table: run, rank, role, index, time, severity, message
    /files/run<n>/rank<r>/<name>  kept files as uint8 datasets, attrs: role, index, source

Durability: the file uses HDF5's original superblock format, which has no "open for
writing" flag, so a file whose writer was killed still opens. Rows are buffered in memory
and written, followed by a flush, at most FLUSH_SECONDS apart and at every failure,
terminal milestone and end of sweep: a killed run loses at most that much, and whatever a
reader sees as `done` is complete. `--resume` runs again whatever is not `done`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distx.errors import UserError
from distx.script.grid import Grid, column_type, from_cell, to_cell

FORMAT = "distx-results"
FORMAT_VERSION = 1
EXPERIMENT_COLUMNS = ("id", "index", "status", "attempts", "rank", "host", "start", "end", "error")
FLUSH_SECONDS = 0.5
TEXT = h5py.string_dtype()
FINGERPRINTS = ("script", "kernels", "data")

RUNS = np.dtype([("run", "i4"), ("run_id", TEXT), ("started", "f8"), ("ended", "f8"),
                 ("state", TEXT), ("exit_code", "i4"), ("world_size", "i4"),
                 ("command_line", TEXT)])
MILESTONES = np.dtype([("run", "i4"), ("rank", "i4"), ("role", TEXT), ("name", TEXT),
                       ("time", "f8"), ("detail", TEXT)])
VALUES = np.dtype([("run", "i4"), ("rank", "i4"), ("role", TEXT), ("key", TEXT),
                   ("time", "f8"), ("kind", TEXT), ("value", TEXT)])
TASKS = np.dtype([("run", "i4"), ("rank", "i4"), ("role", TEXT), ("index", "i4"),
                  ("task", TEXT), ("status", TEXT), ("start", "f8"), ("end", "f8"),
                  ("error", TEXT)])
LOGS = np.dtype([("run", "i4"), ("rank", "i4"), ("role", TEXT), ("index", "i4"),
                 ("time", "f8"), ("severity", TEXT), ("message", TEXT)])
# Fixed-length text where it is short: variable-length columns cost a conversion per row
# on every write, and a sweep writes this table at up to 100,000 rows a second.
ATTEMPTS = np.dtype([("run", "i4"), ("id", "S16"), ("part", "i4"), ("attempt", "i4"),
                     ("rank", "i4"), ("host", "S64"), ("start", "f8"), ("end", "f8"),
                     ("status", "S8"), ("error", TEXT)])


@dataclass
class RunIdentity:
    """What a run writes about itself, and what --resume compares."""

    name: str
    run_id: str
    script_text: str
    script_path: str
    script_sha256: str
    fingerprints: dict[str, str]
    attributes: dict[str, Any]   # versions, world size, command line, ...
    hosts: list[str]


class AppendTable:
    """A one-dimensional compound dataset; rows are buffered and written at `write()`."""

    def __init__(self, file: h5py.File, name: str, dtype: np.dtype) -> None:
        if name in file:
            self.dataset = file[name]
        else:
            self.dataset = file.create_dataset(name, shape=(0,), maxshape=(None,),
                                               dtype=dtype, chunks=(1024,))
        self.pending: list[tuple] = []
        self.blocks: list[np.ndarray] = []

    def append(self, rows: list[tuple]) -> None:
        self.pending.extend(rows)

    def append_block(self, rows: np.ndarray) -> None:
        """Rows already in a structured array of this table's dtype (a sweep batch)."""
        self.blocks.append(rows)

    def write(self) -> None:
        if self.pending:
            self.blocks.append(np.array(self.pending, dtype=self.dataset.dtype))
            self.pending = []
        if not self.blocks:
            return
        rows = np.concatenate(self.blocks) if len(self.blocks) > 1 else self.blocks[0]
        self.blocks = []
        start = self.dataset.shape[0]
        self.dataset.resize((start + len(rows),))
        self.dataset[start:] = rows


class ResultsFile:
    """Rank 0's writer for one run (a first run or a resume) of a results file."""

    def __init__(self, path: Path, file: h5py.File, run: int) -> None:
        self.path = path
        self.file = file
        self.run = run
        self.tables = {name: AppendTable(file, name, dtype) for name, dtype in (
            ("milestones", MILESTONES), ("values", VALUES), ("tasks", TASKS),
            ("logs", LOGS), ("attempts", ATTEMPTS))}
        self.runs = AppendTable(file, "runs", RUNS)
        self.table: ExperimentTable | None = None
        self._array_counts: dict[str, int] = {}
        self._last_flush = time.monotonic()

    # ----- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, identity: RunIdentity, *, overwrite: bool = False,
             resume: bool = False, force: bool = False) -> ResultsFile:
        """Create the file, or with `resume` continue an existing one of the same script."""
        if path.exists() and resume:
            file = _reopen(path, identity, force)
        elif path.exists() and not overwrite:
            raise UserError("the results file already exists", file=str(path),
                            fix="pass --resume to continue it, --overwrite to replace it, "
                            "or --output to write elsewhere")
        else:
            return cls._create(path, identity)
        results = cls(path, file, file["runs"].shape[0])
        results._start(identity)
        return results

    @classmethod
    def _create(cls, path: Path, identity: RunIdentity) -> ResultsFile:
        """A new file, complete and flushed under a temporary name, then renamed into place.

        A process killed while HDF5 writes a new file leaves a truncated one that no tool
        opens; so the results path only ever names a file that was whole, and --overwrite
        keeps the old file until then. The open handle follows the rename (same inode).
        The original superblock format is used on purpose: with libver="latest" HDF5 marks
        the file open-for-write and, after a crash, refuses to open it until `h5clear`.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(path.name + ".creating")
        file = h5py.File(building, "w")
        file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
        results = cls(path, file, 0)
        results._start(identity)
        os.replace(building, path)
        return results

    def _start(self, identity: RunIdentity) -> None:
        file = self.file
        file.attrs.update({
            "name": identity.name, "run_id": identity.run_id, "state": "Running",
            "exit_code": -1, "started": time.time(), "ended": np.nan,
            "script_sha256": identity.script_sha256, **identity.attributes,
            **{f"fingerprint_{key}": value for key, value in identity.fingerprints.items()}})
        for name in ("script", "provenance/hosts"):
            if name in file:
                del file[name]
        script = file.create_dataset("script", data=identity.script_text, dtype=TEXT)
        script.attrs.update({"path": identity.script_path, "sha256": identity.script_sha256})
        file.create_dataset("provenance/hosts", data=np.array(identity.hosts, dtype=object),
                            dtype=TEXT)
        self.runs.append([(self.run, identity.run_id, file.attrs["started"], np.nan,
                           "Running", -1, identity.attributes.get("world_size", 0),
                           identity.attributes.get("command_line", ""))])
        self.flush()

    # ----- writing -----------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for table in (*self.tables.values(), self.runs):
            table.write()
        if self.table is not None:
            self.table.write_dirty()
        self.file.flush()
        self._last_flush = time.monotonic()

    def close(self, state: str, exit_code: int) -> None:
        ended = time.time()
        self.flush()
        runs = self.runs.dataset
        row = runs[self.run]
        row["ended"], row["state"], row["exit_code"] = ended, state, exit_code
        runs[self.run] = row
        self.file.attrs.update({"state": state, "exit_code": exit_code, "ended": ended})
        self.file.flush()
        self.file.close()

    # ----- records from every rank -------------------------------------------------------
    def record_milestone(self, rank: int, role: str, name: str, when: float,
                         detail: str) -> None:
        self.tables["milestones"].append([(self.run, rank, role, name, when, detail)])
        if name in ("Errored", "Cancelled", "Finished"):
            self.flush()

    def record_value(self, rank: int, record: dict) -> None:
        kind, text = self._encode_value(rank, record["key"], record["value"])
        self.tables["values"].append([(self.run, rank, record["role"], record["key"],
                                       record["time"], kind, text)])

    def _encode_value(self, rank: int, key: str, value: Any) -> tuple[str, str]:
        if isinstance(value, np.ndarray):
            base = f"value_arrays/run{self.run}/rank{rank}/{key.replace('/', '_')}"
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
        self.tables["tasks"].append([(self.run, rank, record["role"], record["index"],
                                      record["task"], record["status"], record["start"],
                                      record["end"], record["error"])])
        self.record_log(rank, record)
        if record["status"] == "error":
            self.flush()

    def record_log(self, rank: int, record: dict) -> None:
        """The lines `record["log"]` of (time, severity, text) of task `record["index"]`
        (-1: sweep tasks on that rank) of `rank`, role `record["role"]`."""
        self.tables["logs"].append([(self.run, rank, record["role"], record["index"], when,
                                     severity, text) for when, severity, text in record["log"]])

    def record_file(self, rank: int, record: dict) -> None:
        name = f"files/run{self.run}/rank{rank}/{record['name']}"
        if name in self.file:
            del self.file[name]
        dataset = self.file.create_dataset(name, data=record["data"])
        dataset.attrs.update({"role": record["role"], "index": record["index"],
                              "source": record["source"]})

    def record_attempt(self, experiment_id: str, part: int, attempt: int, rank: int,
                       host: str, start: float, end: float, status: str, error: str) -> None:
        self.tables["attempts"].append([(self.run, experiment_id, part, attempt, rank, host,
                                         start, end, status, error)])

    # ----- experiments -------------------------------------------------------------------
    def experiments(self, grid: Grid, ids: list[str], outputs: list[str]) -> ExperimentTable:
        self.table = ExperimentTable(self.file, grid, ids, outputs)
        self.flush()
        return self.table


def _reopen(path: Path, identity: RunIdentity, force: bool) -> h5py.File:
    """Open an earlier run's file for writing, after checking it read-only: a file that
    is refused is not opened for writing at all, so it stays byte for byte as it was."""
    fix = "give the results file of an earlier run of this script, or drop --resume"
    try:
        with h5py.File(path, "r") as file:
            _check_resumable(file, identity, force)
        return h5py.File(path, "r+")
    except BlockingIOError:
        raise UserError("the results file is open in another process (a run still writing "
                        "it?)", file=str(path), fix="wait for that run to end") from None
    except OSError as error:
        raise UserError(f"cannot resume: not a writable HDF5 file ({error})", file=str(path),
                        fix=fix) from None


def _check_resumable(file: h5py.File, identity: RunIdentity, force: bool) -> None:
    path = file.filename
    if file.attrs.get("format") != FORMAT:
        raise UserError("cannot resume: not a distx results file (no format attribute "
                        f"'{FORMAT}')", file=path, fix="give the results file of an earlier "
                        "run of this script, or drop --resume")
    changed = [key for key in FINGERPRINTS
               if file.attrs.get(f"fingerprint_{key}") != identity.fingerprints[key]]
    if not changed or force:
        return
    written_by = str(from_cell(file.attrs.get("name", "")))
    if written_by != identity.name:
        raise UserError(f"cannot resume: it holds the results of script '{written_by}', not "
                        f"of '{identity.name}'", file=path,
                        fix="write to a new --output (--force resumes it anyway)")
    what = {"script": "the script (other than its grid)", "kernels": "the kernels",
            "data": "the data"}
    raise UserError("cannot resume: " + " and ".join(what[key] for key in changed)
                    + " changed since it was written, so its results would not match",
                    file=path, fix="write to a new --output, or pass --force to resume anyway")


class ExperimentTable:
    """The experiments table, kept in memory on rank 0 and written row ranges at a time.

    On resume the rows of the file are kept as they are (same ids, positions, history);
    experiments of the current grid that the file lacks are appended.
    """

    def __init__(self, file: h5py.File, grid: Grid, ids: list[str],
                 outputs: list[str]) -> None:
        self.file = file
        self.outputs = outputs
        existing = file["experiments"][()] if "experiments" in file else None
        known = {} if existing is None else {row_id.decode(): position for position, row_id
                                              in enumerate(existing["id"])}
        added = np.array([index for index, row_id in enumerate(ids) if row_id not in known],
                         dtype=np.int64)
        dtype = self._dtype(grid, existing, outputs)
        self.rows = np.zeros(len(known) + len(added), dtype=dtype)
        self.rows["error"] = ""
        for name in outputs:
            self.rows[name] = np.nan
        if existing is not None:
            for name in dtype.names:
                if name in existing.dtype.names:
                    self.rows[name][:len(existing)] = existing[name]
        self._fill_new(len(known), grid, [ids[i] for i in added.tolist()], added)
        self.row_of = {row_id.decode(): position
                       for position, row_id in enumerate(self.rows["id"])}
        if existing is not None and existing.dtype == dtype:
            self.dataset = file["experiments"]
            self.dataset.resize((len(self.rows),))
            self.dataset[len(existing):] = self.rows[len(existing):]
        else:
            if existing is not None:
                del file["experiments"]
            self.dataset = file.create_dataset("experiments", data=self.rows,
                                               maxshape=(None,), chunks=True)
        self.dataset.attrs["keyfields"] = grid.names
        self.dataset.attrs["outputs"] = outputs
        self._dirty: tuple[int, int] | None = None

    @staticmethod
    def _dtype(grid: Grid, existing: np.ndarray | None, outputs: list[str]) -> np.dtype:
        columns = [("id", "S16"), ("index", "i8")]
        for name, values in grid.columns.items():
            values = list(values)
            if existing is not None and name in existing.dtype.names:
                values += [from_cell(v) for v in np.unique(existing[name])]
            columns.append((name, column_type(values)))
        columns += [("status", "S8"), ("attempts", "i4"), ("rank", "i4"), ("host", "S64"),
                    ("start", "f8"), ("end", "f8"), ("error", TEXT)]
        columns += [(name, "f8") for name in outputs]
        return np.dtype(columns)

    def _fill_new(self, first: int, grid: Grid, ids: list[str], indices: np.ndarray) -> None:
        new = self.rows[first:]
        new["id"] = ids
        new["index"] = np.arange(first, first + len(ids))
        for name, values in grid.keyfield_columns(indices).items():
            new[name] = [to_cell(value) for value in values]
        new["status"] = b"created"
        new["rank"] = -1
        new["start"] = np.nan
        new["end"] = np.nan

    def update(self, position: int, **fields: Any) -> None:
        row = self.rows[position]
        for name, value in fields.items():
            row[name] = value
        self._mark(position, position + 1)

    def update_many(self, positions: np.ndarray, **fields: Any) -> None:
        """Set columns of many rows at once (a value or an array per column)."""
        if not len(positions):
            return
        for name, value in fields.items():
            self.rows[name][positions] = value
        self._mark(int(positions.min()), int(positions.max()) + 1)

    def _mark(self, low: int, high: int) -> None:
        if self._dirty is not None:
            low, high = min(low, self._dirty[0]), max(high, self._dirty[1])
        self._dirty = (low, high)

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
        return status_counts(self.rows)


def status_counts(rows: np.ndarray) -> dict[str, int]:
    statuses, numbers = np.unique(rows["status"], return_counts=True)
    return {status.decode(): int(number) for status, number in zip(statuses, numbers)}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def read_results(path: str | Path, read: Callable[[h5py.File], Any], tries: int = 20) -> Any:
    """`read(file)` on a results file, retried as a whole.

    distx writes without SWMR, so while a run writes, a reader can meet a dataset in the
    middle of an update (an HDF5 error on open or on any read); a moment later it is
    whole again.
    """
    for attempt in range(tries):
        try:
            with open_results(path) as file:
                return read(file)
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            if attempt == tries - 1:
                raise UserError(f"cannot read the file while a run writes it ({error})",
                                file=str(path), fix="try again in a moment") from None
            time.sleep(0.05)
    raise AssertionError("unreachable")


def open_results(path: str | Path, tries: int = 20) -> h5py.File:
    """Open a results file for reading (also while a run writes it), or explain why not.

    A run may be in the middle of writing; then the file can look inconsistent for a
    moment, so opening is retried a few times before giving up.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", file=str(path), fix="give the path of a results file")
    for attempt in range(tries):
        try:
            file = h5py.File(path, "r", locking=False)
            break
        except OSError as error:
            with path.open("rb") as raw:
                looks_like_hdf5 = raw.read(8) == b"\x89HDF\r\n\x1a\n"
            if attempt == tries - 1 or not looks_like_hdf5:
                raise UserError(f"not a readable HDF5 file ({error})", file=str(path)) from None
            time.sleep(0.05)
    if file.attrs.get("format") != FORMAT:
        file.close()
        raise UserError("not a distx results file (no format attribute 'distx-results')",
                        file=str(path), fix="give a file written by distx run")
    return file


def reset_experiments(path: str | Path, statuses: set[str]) -> dict[str, int]:
    """Set experiments with one of `statuses` back to `created`; their attempts stay.

    Rows keep their ids and positions, and /attempts keeps every earlier attempt (unlike
    PyExperimenter's reset, which deletes rows and creates new ids).
    """
    unknown = statuses - {"created", "running", "done", "error"}
    if unknown:
        raise UserError(f"unknown status {', '.join(sorted(unknown))}",
                        fix="use created, running, done or error")
    open_results(path).close()
    try:
        file = h5py.File(path, "r+")
    except BlockingIOError:
        raise UserError(f"{path} is open in another process (a run still writing it?)",
                        fix="wait for the run to end") from None
    with file:
        if "experiments" not in file:
            return {}
        table = file["experiments"]
        rows = table[()]
        chosen = np.isin(rows["status"], [status.encode() for status in statuses])
        counts = status_counts(rows[chosen]) if chosen.any() else {}
        rows["status"][chosen] = b"created"
        table[...] = rows
    return counts
