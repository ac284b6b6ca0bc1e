"""The experiments table and the attempt history: their one owner.

Rank 0 keeps the table in memory. The sweep changes it only through the named transitions
below (start, record a batch, record one, put back to created, reset); each marks the rows
it changed, and the writer collects those changes (`take_changes`) into journal records.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distx.results.arrays import ArrayBlock, concatenate, pack
from distx.results.checkpoint import arrays_record
from distx.results.journal import Record
from distx.results.layout import ATTEMPTS, ERRORS, experiment_dtype, stored_text
from distx.script.grid import Grid, column_type, from_cell, to_cell
from distx.vocabulary import LOST, Status

CREATED, RUNNING, DONE, ERROR = (status.encoded for status in Status)


def experiment_rows(grid: Grid, ids: list[str], outputs: list[str],
                    existing: np.ndarray | None,
                    indices: np.ndarray | None = None) -> np.ndarray:
    """The table for this grid: the rows of the file as they are (same ids, positions,
    history), then the experiments of the grid that the file lacks. `ids` are those of
    the grid's experiments at `indices` (all of the grid by default; a shard's slice)."""
    known = set() if existing is None else {row_id.decode() for row_id in existing["id"]}
    added = np.array([position for position, row_id in enumerate(ids) if row_id not in known],
                     dtype=np.int64)
    keyfields = {}
    for name, values in grid.columns.items():
        values = list(values)
        if existing is not None and name in existing.dtype.names:
            values += [from_cell(v) for v in np.unique(existing[name])]
        keyfields[name] = column_type(values)
    rows = np.zeros(len(known) + len(added), dtype=experiment_dtype(keyfields, outputs))
    for name in outputs:
        rows[name] = np.nan
    if existing is not None:
        for name in rows.dtype.names:
            if name in existing.dtype.names:
                rows[name][:len(existing)] = existing[name]
    new = rows[len(known):]
    new["id"] = [ids[i] for i in added.tolist()]
    new["index"] = np.arange(len(known), len(rows))
    for name, values in grid.keyfield_columns(
            added if indices is None else indices[added]).items():
        new[name] = [to_cell(value) for value in values]
    new["status"] = CREATED
    new["rank"] = -1
    new["start"] = np.nan
    new["end"] = np.nan
    return rows


class ExperimentTable:
    """The experiments of a results file and the attempts of this run, in memory."""

    def __init__(self, rows: np.ndarray, run: int) -> None:
        self.rows = rows
        self.run = run
        self.row_of = {row_id.decode(): position
                       for position, row_id in enumerate(rows["id"])}
        self._changed = np.zeros(len(rows), dtype=bool)
        self._attempts: list[np.ndarray] = []
        self._errors: list[np.ndarray] = []
        self._error_of: dict[int, str] = {}     # row -> its last error text of this run
        self._arrays: dict[str, list[tuple[np.ndarray, ArrayBlock]]] = {}

    # ----- transitions ---------------------------------------------------------------------
    def start(self, rows: np.ndarray, rank: int, host: str, when: float) -> None:
        """Rows not yet running become running on `rank`."""
        starting = rows[self.rows["status"][rows] != RUNNING]
        self._set(starting, status=RUNNING, rank=rank, host=host, start=when)

    def record_done(self, rows: np.ndarray, rank: int, host: str, attempts: np.ndarray,
                    start: np.ndarray, end: np.ndarray,
                    outputs: dict[str, np.ndarray]) -> None:
        """A batch of experiments finished, each by one task on `rank`, numeric outputs."""
        self._set(rows, status=DONE, rank=rank, host=host, attempts=attempts, start=start,
                  end=end, **{name: _floats(column)
                                        for name, column in outputs.items()})

    def record(self, row: int, status: Status, rank: int, host: str, attempts: int,
               start: float, end: float, outputs: dict[str, Any]) -> None:
        """One experiment finished as done or error (numeric outputs; arrays go through
        set_output_array, the error text of its failed attempt through record_attempts)."""
        self._set(np.array([row]), status=status.encoded, rank=rank, host=host,
                  attempts=attempts, start=start, end=end,
                  **{name: _floats(np.array([value], dtype=object))
                     for name, value in outputs.items()})

    def record_arrays(self, output: str, rows: np.ndarray, block: ArrayBlock) -> None:
        """The arrays of output `output` of experiments `rows`, as one block."""
        if len(rows):
            self._arrays.setdefault(output, []).append((rows, block))

    def set_output_array(self, row: int, output: str, array: np.ndarray) -> None:
        self.record_arrays(output, np.array([row], dtype=np.int64), pack([array]))

    def back_to_created(self, rows: np.ndarray) -> None:
        """The running ones among `rows` did not finish (a stop, a fatal error)."""
        self._set(rows[self.rows["status"][rows] == RUNNING], status=CREATED)

    def reset(self, statuses: set[str]) -> dict[str, int]:
        """Experiments with one of `statuses` back to created; returns what was reset."""
        chosen = np.flatnonzero(np.isin(self.rows["status"], [s.encode() for s in statuses]))
        counts = status_counts(self.rows[chosen])
        self._set(chosen, status=CREATED)
        return counts

    def record_attempts(self, rows: np.ndarray, parts: np.ndarray, attempts: np.ndarray,
                        rank: int, host: str, start: np.ndarray, end: np.ndarray,
                        ok: np.ndarray, errors: dict[int, str]) -> None:
        """One /attempts row per task of a batch (errors: text by position in the batch)."""
        block = self._attempt_block(rows, parts, attempts, rank, host, start, end)
        block["status"] = np.where(ok, DONE, ERROR)
        self._attempts.append(block)
        if errors:
            failed = np.array(sorted(errors), dtype=np.int64)
            texts = np.zeros(len(failed), dtype=ERRORS)
            for name in ("run", "id", "part", "attempt"):
                texts[name] = block[name][failed]
            texts["error"] = [stored_text(errors[position]) for position in failed.tolist()]
            self._errors.append(texts)
            for position, text in zip(failed.tolist(), texts["error"]):
                self._error_of[int(rows[position])] = text

    def record_lost_attempts(self, rows: np.ndarray, parts: np.ndarray, attempts: np.ndarray,
                             rank: int, host: str, start: float, end: float) -> None:
        """One /attempts row, status `lost`, per task in flight on a rank that died (the
        cause is that rank's Errored milestone; no /errors row: the task did not fail)."""
        block = self._attempt_block(rows, parts, attempts, rank, host, start, end)
        block["status"] = LOST.encode()
        self._attempts.append(block)

    def _attempt_block(self, rows: np.ndarray, parts: np.ndarray, attempts: np.ndarray,
                       rank: int, host: str, start: Any, end: Any) -> np.ndarray:
        block = np.empty(len(rows), dtype=ATTEMPTS)
        block["run"] = self.run
        block["id"] = self.rows["id"][rows]
        block["part"] = parts
        block["attempt"] = attempts
        block["rank"] = rank
        block["host"] = host.encode()
        block["start"], block["end"] = start, end
        return block

    def _set(self, rows: np.ndarray, **columns: Any) -> None:
        if not len(rows):
            return
        for name, value in columns.items():
            self.rows[name][rows] = value.encode() if isinstance(value, str) and \
                self.rows.dtype[name].kind == "S" else value
        self._changed[rows] = True

    # ----- questions -----------------------------------------------------------------------
    def status_of(self, rows: np.ndarray) -> np.ndarray:
        return self.rows["status"][rows]

    def attempts_of(self, rows: np.ndarray) -> np.ndarray:
        return self.rows["attempts"][rows].astype(np.int32)

    def counts(self) -> dict[str, int]:
        return status_counts(self.rows)

    def first_error(self) -> tuple[str, str] | None:
        """(id, first line of the error in this run) of the first experiment in error."""
        failed = np.flatnonzero(self.rows["status"] == ERROR)
        if not len(failed):
            return None
        text = self._error_of.get(int(failed[0]), "")
        return self.rows["id"][failed[0]].decode(), (text.splitlines() or [""])[0]

    # ----- for the writer ------------------------------------------------------------------
    def take_changes(self) -> list[Record]:
        """Journal records of everything changed since the last call."""
        records = [arrays_record(output, np.concatenate([rows for rows, _ in blocks]),
                                 concatenate([block for _, block in blocks]))
                   for output, blocks in self._arrays.items()]
        self._arrays = {}
        positions = np.flatnonzero(self._changed)
        if len(positions):
            self._changed[positions] = False
            low, high = int(positions[0]), int(positions[-1]) + 1
            changed = self.rows[low:high].copy() if len(positions) == high - low \
                else self.rows[positions]   # a sweep changes rows in order: often a slice
            records.append(Record("rows", {}, {"positions": positions, "rows": changed}))
        if self._attempts:
            block = np.concatenate(self._attempts)
            self._attempts = []
            records.append(Record("append", {"table": "attempts"}, {"rows": block}))
        if self._errors:
            records.append(Record("append", {"table": "errors"},
                                  {"rows": np.concatenate(self._errors)}))
            self._errors = []
        return records


def status_counts(rows: np.ndarray) -> dict[str, int]:
    statuses, numbers = np.unique(rows["status"], return_counts=True)
    return {status.decode(): int(number) for status, number in zip(statuses, numbers)}


def _floats(values: np.ndarray) -> np.ndarray:
    """Output values as float64; one that is no number (10**400, text) becomes NaN
    rather than failing the sweep."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return np.array([_float(value) for value in np.asarray(values, dtype=object)])


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan
