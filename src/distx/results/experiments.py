"""The experiments table and the attempt history: their one owner.

Rank 0 keeps the table in memory. The sweep changes it only through the named transitions
below (start, record a batch, record one, put back to created, reset); each marks the rows
it changed, and the writer collects those changes into journal records (`take_changes`)
and, at a checkpoint, the rows changed since the last one as they are then (`unsaved_rows`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distx.results.arrays import ArrayBlock, concatenate, pack
from distx.results.checkpoint import arrays_record
from distx.results.journal import Record
from distx.results.layout import (
    ATTEMPTS,
    ERRORS,
    experiment_dtype,
    experiment_state,
    stored_text,
)
from distx.script.grid import Grid, column_type, from_cell, to_cell
from distx.vocabulary import LOST, Status

CREATED, RUNNING, DONE, ERROR = (status.encoded for status in Status)
JOINED_BYTES = 1 << 16
"""Array blocks are joined into journal records of at most this size (see _joinable)."""


def experiment_rows(grid: Grid, ids: np.ndarray | list[str], outputs: list[str],
                    existing: np.ndarray | None,
                    indices: np.ndarray | None = None) -> np.ndarray:
    """The table for this grid: the rows of the file as they are (same ids, positions,
    history), then the experiments of the grid that the file lacks. `ids` are those of
    the grid's experiments at `indices` (all of the grid by default; a shard's slice)."""
    ids = np.asarray(ids, dtype="S16")
    known = 0 if existing is None else len(existing)
    added = np.arange(len(ids)) if existing is None else _missing(ids, existing["id"])
    keyfields = {}
    for name, values in grid.columns.items():
        values = list(values)
        if existing is not None and name in existing.dtype.names:
            values += _stored_values(existing[name], values)
        keyfields[name] = column_type(values)
    # copies of one row: 1.2 ms for 200,000 rows, against 4.4 ms column by column
    rows = np.tile(_new_row(experiment_dtype(keyfields, outputs), outputs), known + len(added))
    if existing is not None:
        for name in rows.dtype.names:
            if name in existing.dtype.names:
                rows[name][:known] = existing[name]
    new = rows[known:]
    new["id"] = ids[added]
    new["index"] = np.arange(known, len(rows))
    for name, where in grid.value_positions(
            added if indices is None else indices[added]).items():
        new[name] = _cells(grid.columns[name], new.dtype[name])[where]
    return rows


def _new_row(dtype: np.dtype, outputs: list[str]) -> np.ndarray:
    """A row of an experiment not yet run: created, on no rank, no times, no outputs."""
    row = np.zeros(1, dtype=dtype)
    row["status"], row["rank"], row["start"], row["end"] = CREATED, -1, np.nan, np.nan
    for name in outputs:
        row[name] = np.nan
    return row


def _cells(values: list, dtype: np.dtype) -> np.ndarray:
    """A keyfield's values as cells of its column, by position (a table of a million rows
    takes them from this array, not from a million-item list)."""
    return np.array([to_cell(value) for value in values] if dtype.kind == "S" else values,
                    dtype=dtype)


def _missing(ids: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The positions of `ids` that `known` lacks (16-byte ids). A resume mostly meets the
    same grid, or a grown one, in the same order; otherwise sorting beats np.isin, which
    hashes every byte string (1.5 s against 0.7 s for 10^6 ids)."""
    common = min(len(ids), len(known))
    if np.array_equal(ids[:common], known[:common]):
        return np.arange(common, len(ids))
    ordered = np.sort(known)
    found = np.minimum(np.searchsorted(ordered, ids), len(ordered) - 1)
    return np.flatnonzero(ordered[found] != ids) if len(ordered) else np.arange(len(ids))


def _stored_values(column: np.ndarray, values: list) -> list:
    """What column_type needs of a keyfield's stored column to type it beside the grid's
    `values`: one cell of a numeric column when the result stays numeric (only the values'
    types decide it then), else every distinct cell (text takes the width of the longest)."""
    if column.dtype.kind in "biuf" and len(column):
        one = [from_cell(column[0])]
        if not column_type(values + one).startswith("S"):
            return one
    return [from_cell(v) for v in np.unique(column)]


class ExperimentTable:
    """The experiments of a results file and the attempts of this run, in memory."""

    def __init__(self, rows: np.ndarray, run: int) -> None:
        self.rows = rows
        self.run = run
        self._changed = np.zeros(len(rows), dtype=bool)   # since the last take_changes
        self._unsaved = np.zeros(len(rows), dtype=bool)   # since the last unsaved_rows
        self._attempts = np.empty(0, dtype=ATTEMPTS)   # the first _attempt_count are new
        self._attempt_count = 0
        self._attempts_expected = 0   # attempt rows still to come (expect_attempts)
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
        if errors:
            failed = np.array(sorted(errors), dtype=np.int64)
            texts = np.zeros(len(failed), dtype=ERRORS)
            for name in ("run", "id", "part", "attempt"):
                texts[name] = block[name][failed]
            texts["error"] = [stored_text(errors[position]) for position in failed.tolist()]
            self._errors.append(texts)
            for position, text in zip(failed.tolist(), texts["error"]):
                self._error_of[int(rows[position])] = text

    def expect_attempts(self, count: int) -> None:
        """About `count` attempt rows are coming (a sweep's tasks): the block that takes
        them is made that large at once. Grown by doubling, each copy went to memory never
        touched before, and its page faults cost 0.5 us a row here."""
        self._attempts_expected = count

    def _new_attempts(self, count: int) -> np.ndarray:
        """Room for `count` more attempt rows, at the end of one growing block (a batch
        each as arrays of their own cost a structured concatenation per batch)."""
        end = self._attempt_count + count
        if end > len(self._attempts):
            grown = np.empty(max(end, 2 * len(self._attempts), self._attempts_expected, 1024),
                             dtype=ATTEMPTS)
            grown[:self._attempt_count] = self._attempts[:self._attempt_count]
            self._attempts = grown
        block = self._attempts[self._attempt_count:end]
        self._attempt_count = end
        return block

    def record_lost_attempts(self, rows: np.ndarray, parts: np.ndarray, attempts: np.ndarray,
                             rank: int, host: str, start: float, end: float) -> None:
        """One /attempts row, status `lost`, per task in flight on a rank that died (the
        cause is that rank's Errored milestone; no /errors row: the task did not fail)."""
        block = self._attempt_block(rows, parts, attempts, rank, host, start, end)
        block["status"] = LOST.encode()

    def _attempt_block(self, rows: np.ndarray, parts: np.ndarray, attempts: np.ndarray,
                       rank: int, host: str, start: Any, end: Any) -> np.ndarray:
        """/attempts rows for these tasks, all but their status (the caller's)."""
        block = self._new_attempts(len(rows))
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
        self._unsaved[rows] = True

    # ----- questions -----------------------------------------------------------------------
    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The table row of each of `ids` (16-byte ids, every one in the table)."""
        table_ids = self.rows["id"]
        if np.array_equal(table_ids, ids):   # a new table: the grid's order
            return np.arange(len(ids))
        order = np.argsort(table_ids)
        return order[np.searchsorted(table_ids, ids, sorter=order)]

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
        """Journal records of everything changed since the last call. The "rows" record
        may be a view of the table: encode it before the table changes again."""
        records = [arrays_record(output, np.concatenate([rows for rows, _ in group]),
                                 concatenate([block for _, block in group]))
                   for output, blocks in self._arrays.items() for group in _joinable(blocks)]
        self._arrays = {}
        rows = _rows_record(self.rows, self._changed, experiment_state(self.rows.dtype))
        if rows is not None:
            records.append(rows)
        if self._attempt_count:   # handed over whole; the next attempts get a new block
            records.append(Record("append", {"table": "attempts"},
                                  {"rows": self._attempts[:self._attempt_count]}))
            self._attempts_expected = max(0, self._attempts_expected - self._attempt_count)
            self._attempts = np.empty(0, dtype=ATTEMPTS)
            self._attempt_count = 0
        if self._errors:
            records.append(Record("append", {"table": "errors"},
                                  {"rows": np.concatenate(self._errors)}))
            self._errors = []
        return records

    def unsaved_rows(self) -> Record | None:
        """For a checkpoint: the rows changed since the last call, as they are now (the
        journal has every change to them; the checkpoint needs only the last)."""
        return _rows_record(self.rows, self._unsaved)


def _rows_record(table: np.ndarray, marked: np.ndarray,
                 columns: list[str] | None = None) -> Record | None:
    """A "rows" record of the `marked` rows of `table` (a view when they are one slice,
    as a sweep's mostly are), of `columns` only if given, clearing the marks.

    The journal's records carry the columns a run changes: the id, index and keyfields
    are in the checkpoint that made the table, and were half the bytes a sweep journals
    (33 of 65 per row for one integer keyfield and one output)."""
    positions = np.flatnonzero(marked)
    if not len(positions):
        return None
    marked[positions] = False
    low, high = int(positions[0]), int(positions[-1]) + 1
    rows = table[low:high] if len(positions) == high - low else table[positions]
    return Record("rows", {}, {"positions": positions,
                               "rows": rows if columns is None else rows[columns]})


def _joinable(blocks: list[tuple[np.ndarray, ArrayBlock]]) -> list[list[tuple]]:
    """Consecutive blocks of arrays in groups of at most JOINED_BYTES, one record each (a
    record costs ~10 us to encode and a write at checkpoints); a larger block is a group
    of its own. Joined, a block is copied into new memory: one record of all the blocks
    since the last journal write copied a sweep's every array (80 MB, 0.2 s on a machine
    whose fresh memory costs 2 ms a megabyte) and held them twice meanwhile."""
    groups: list[list[tuple]] = []
    size = 0
    for rows, block in blocks:
        nbytes = block.values.nbytes
        if not groups or size + nbytes > JOINED_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((rows, block))
        size += nbytes
    return groups


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
