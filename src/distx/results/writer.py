"""Rank 0's writer of one run (a first run or a resume) of a results file.

Every change becomes a journal record as it arrives; the journal is fsynced at most
SYNC_SECONDS apart and at every failure, terminal milestone and end of sweep, so a crash
re-runs at most the results of the last SYNC_SECONDS. At checkpoints the records
are applied to a new copy of the file that replaces the old one whole (checkpoint.py),
with the experiment rows as the table holds them then: every SYNC_SECONDS while that is
cheap, less often as the file grows so that checkpoints take at most CHECKPOINT_SHARE of
the time, when a sweep creates its table, at the end of a sweep that rank 0's sequence
continues after, and at close. The file at the results path is never open for writing, so
any reader (h5py included) can open it at any time; it is at most one checkpoint interval
behind the journal.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import h5py
import numpy as np

from distx.errors import ResultsWriteError, UserError
from distx.results import admin, checkpoint
from distx.results.claim import Claim
from distx.results.experiments import ExperimentTable, experiment_rows
from distx.results.journal import JournalWriter, Record, journal_path
from distx.results.layout import (
    FINGERPRINTS,
    FORMAT,
    FORMAT_VERSION,
    file_shard,
    shard_attributes,
    stored_text,
)
from distx.results.reader import check_structure, check_version, format_version, snapshot
from distx.results.upgrade import upgrade_records
from distx.script.grid import Grid, from_cell
from distx.script.shard import Shard
from distx.vocabulary import TERMINAL, RunState, TaskStatus

SYNC_SECONDS = 0.5
CHECKPOINT_SHARE = 0.05   # at most this share of the run's time goes into checkpoints
CHECKPOINT_BYTES_PER_SECOND = 100e6
"""What a checkpoint is assumed to copy, write and fsync per second before one of that size
was measured: a large table is not checkpointed every SYNC_SECONDS just because the last
checkpoint, of a small file, was cheap."""


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
    shard: Shard | None = None   # --shard: this run holds one slice of the experiments


class ResultsFile:
    """The results file of this run: records in, journal and checkpoints out."""

    def __init__(self, path: Path, claim: Claim, file_id: str, seq: int, run: int,
                 fresh: bool, shard: Shard | None) -> None:
        self.path = path
        self.shard = shard                   # the slice of the experiments the file holds
        self.fresh = fresh                   # no file yet: the first checkpoint starts one
        self.created = fresh                 # this run made the file: no table but its own
        self.claim = claim
        self.file_id = file_id
        self.run = run
        self.seq = seq                       # the last sequence number given to a record
        self.arrived: list[Record | _Row] = []   # not yet in the journal
        self.journaled: list[Record] = []    # in the journal, not yet in a checkpoint
        # (but for experiment rows: a checkpoint takes those from the table as they are then)
        self.table: ExperimentTable | None = None
        self.journal: JournalWriter | None = None
        self.on_failure: Callable[[int], None] | None = None  # ends the job (launch sets it)
        self.failed = False
        self._array_count = 0
        self.upgrade: list[Record] = []      # an older file's records to this format version
        self._last_sync = self._last_checkpoint = time.monotonic()
        self._checkpoint_cost = 0.0
        self._file_bytes = 0                 # the file at the path, at the last checkpoint
        self._pending_bytes = 0              # array bytes of the records since then

    # ----- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, identity: RunIdentity, *, overwrite: bool = False,
             resume: bool = False, force: bool = False) -> ResultsFile:
        """Create the file, or with `resume` continue an existing one of the same script.
        Refused (UserError, nothing written) when the path cannot hold a results file,
        when --overwrite would replace something else, or when another run writes it."""
        admin.check_output_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        claim = Claim(path, identity.run_id, "resume" if resume and path.exists() else "run")
        try:
            if path.exists() and not resume:
                if not overwrite:
                    raise UserError("the results file already exists", file=str(path),
                                    fix="pass --resume to continue it, --overwrite to replace "
                                    "it, or --output to write elsewhere")
                admin.check_replaceable(path)
            if resume and path.exists():
                results = cls._resume(path, claim, identity, force)
            else:
                results = cls._create(path, claim)
            results._start(identity)
        except BaseException:
            claim.release()
            raise
        return results

    @classmethod
    def _create(cls, path: Path, claim: Claim) -> ResultsFile:
        journal_path(path).unlink(missing_ok=True)   # of an earlier file at this path
        return cls(path, claim, secrets.token_hex(8), 0, 0, fresh=True, shard=None)

    @classmethod
    def _resume(cls, path: Path, claim: Claim, identity: RunIdentity,
                force: bool) -> ResultsFile:
        """Replay what a killed run left in the journal, then check the file read-only:
        a file that is refused stays as it was (apart from the replay)."""
        try:
            h5py.File(path, "r", locking=False).close()
        except OSError as error:
            raise UserError(f"cannot resume: not a writable HDF5 file ({error})",
                            file=str(path), fix="give the results file of an earlier run of "
                            "this script, or drop --resume") from None
        admin.recover(path, claimed=True)
        runs, file_id, seq, shard = snapshot(path, lambda file: _check_resumable(
            file, path, identity, force))
        results = cls(path, claim, file_id, seq, runs, fresh=False, shard=shard)
        results.upgrade = snapshot(path, lambda file: upgrade_records(file)
                                   if format_version(file) < FORMAT_VERSION else [])
        return results

    def _start(self, identity: RunIdentity) -> None:
        self.shard = self.shard or identity.shard
        started = time.time()
        attrs = {"name": identity.name, "run_id": identity.run_id,
                 "state": RunState.RUNNING.value, "exit_code": -1, "started": started,
                 "ended": np.nan, "script_sha256": identity.script_sha256,
                 **{key: _attribute(value) for key, value in identity.attributes.items()},
                 **{f"fingerprint_{key}": value for key, value in identity.fingerprints.items()},
                 **shard_attributes(self.shard)}
        run_row = np.array([(self.run, identity.run_id, started, np.nan,
                             RunState.RUNNING.value, -1,
                             identity.attributes.get("world_size", 0),
                             stored_text(identity.attributes.get("command_line", "")))],
                           dtype=checkpoint.APPEND_TABLES["runs"])
        start = [Record("attrs", {"attrs": attrs}),
                 Record("dataset", {"name": "script", "text": identity.script_text,
                                    "attrs": {"path": identity.script_path,
                                              "sha256": identity.script_sha256}}),
                 Record("dataset", {"name": "provenance/hosts"},
                        {"data": np.array([h.encode() for h in identity.hosts])}),
                 Record("append", {"table": "runs"}, {"rows": run_row})]
        self._guarded(lambda: self._checkpoint(self.upgrade + start,
                                               compact=bool(self.upgrade)))
        self.upgrade = []
        self.journal = self._guarded(lambda: JournalWriter(journal_path(self.path),
                                                           self.file_id))

    # ----- writing -----------------------------------------------------------------------
    def maybe_flush(self) -> None:
        """Called often by the coordinator: sync and checkpoint when due."""
        now = time.monotonic()
        if now - self._last_checkpoint >= max(
                SYNC_SECONDS, self._expected_checkpoint_cost() / CHECKPOINT_SHARE):
            self.checkpoint()
        elif now - self._last_sync >= SYNC_SECONDS:
            self.flush()

    def _expected_checkpoint_cost(self) -> float:
        return max(self._checkpoint_cost, (self._file_bytes + self._pending_bytes)
                   / CHECKPOINT_BYTES_PER_SECOND)

    def checkpoint(self) -> None:
        """Everything so far into the file at the path (the end of a sweep: a plain HDF5
        reader then sees the whole table)."""
        self._guarded(lambda: self._checkpoint([]))

    def flush(self) -> None:
        """Make every record so far durable (journal fsync)."""
        self._guarded(self._sync)

    def _sync(self) -> None:
        self._to_journal()
        self.journal.sync()
        self._last_sync = time.monotonic()

    def _to_journal(self) -> None:
        if self.table is not None:
            self.arrived.extend(self.table.take_changes())
        self.arrived = _merged_appends(self.arrived)
        for record in self.arrived:
            self.seq += 1
            record.seq = self.seq
        if self.journal is not None:
            self.journal.append(self.arrived)
        self._pending_bytes += sum(array.nbytes for record in self.arrived
                                   for array in record.arrays.values())
        self.journaled.extend(record for record in self.arrived if record.op != "rows")
        self.arrived = []

    def _checkpoint(self, unjournaled: list[Record], compact: bool = False) -> None:
        """A new file at the path with every record so far (and `unjournaled`, records
        too large for the journal that only a checkpoint keeps)."""
        began = time.monotonic()
        if self.journal is not None:
            self._sync()
        else:
            self._to_journal()
        rows = self.table.unsaved_rows() if self.table is not None else None
        checkpoint.replace(self.path, self.journaled + ([rows] if rows else []) + unjournaled,
                           self.seq, self.file_id, fresh=self.fresh, compact=compact)
        self.fresh = False
        self.journaled = []
        if self.journal is not None:
            self.journal.truncate()
        self._last_checkpoint = time.monotonic()
        self._checkpoint_cost = self._last_checkpoint - began
        self._file_bytes = self.path.stat().st_size
        self._pending_bytes = 0

    def close(self, state: str, exit_code: int) -> None:
        """The run's end, in a last checkpoint; the journal and the claim go."""
        if self.journal is None or self.failed:   # closed already, or cannot write
            return
        ended = time.time()
        self.arrived += [Record("run_end", {"run": self.run, "ended": ended, "state": state,
                                            "exit_code": int(exit_code)}),
                         Record("attrs", {"attrs": {"state": state, "exit_code": int(exit_code),
                                                    "ended": ended}})]
        self._guarded(lambda: self._checkpoint([], compact=True))
        self.journal.close(remove=True)
        self.journal = None
        self.claim.release()

    def _guarded(self, action: Callable[[], Any]) -> Any:
        """Run a write; after a failed one, writes do nothing (the run is ending)."""
        if self.failed:
            return None
        try:
            return action()
        except (OSError, RuntimeError) as error:   # h5py reports some write failures so
            self._fail(error)

    def _fail(self, error: Exception) -> NoReturn:
        """The file cannot be written: one line, and the job ends (exit code 1)."""
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        message = (f"{self.path}: cannot write the results file ({reason}); "
                   "it keeps everything recorded before. Fix: free space, then --resume")
        self.failed = True
        if self.on_failure is not None:
            print(f"distx: error: {message}", file=sys.stderr, flush=True)
            self.on_failure(1)
        raise ResultsWriteError(message)

    # ----- records from every rank -------------------------------------------------------
    def record_milestone(self, rank: int, role: str, name: str, when: float,
                         detail: str) -> None:
        self._append("milestones", (self.run, rank, role, name, when, detail))
        if name in TERMINAL:
            self.flush()

    def record_value(self, rank: int, record: dict) -> None:
        kind, text = self._encode_value(rank, record["value"])
        self._append("values", (self.run, rank, record["role"], record["key"],
                                record["time"], kind, text))

    def _encode_value(self, rank: int, value: Any) -> tuple[str, str]:
        if isinstance(value, np.ndarray):
            self._array_count += 1
            name = f"value_arrays/run{self.run}/rank{rank}/{self._array_count}"
            self.arrived.append(Record("dataset", {"name": name}, {"data": _storable(value)}))
            return "array", "/" + name
        try:
            return "json", json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            return "text", repr(value)

    def record_task(self, rank: int, record: dict) -> None:
        self._append("tasks", (self.run, rank, record["role"], record["index"],
                               record["task"], record["status"], record["start"],
                               record["end"], record["error"]))
        self.record_log(rank, record)
        if record["status"] == TaskStatus.ERROR.value:
            self.flush()

    def record_log(self, rank: int, record: dict) -> None:
        """The lines `record["log"]` of (time, severity, text) of task `record["index"]`
        (-1: sweep tasks on that rank) of `rank`, role `record["role"]`."""
        for when, severity, text in record["log"]:
            self._append("logs", (self.run, rank, record["role"], record["index"], when,
                                  severity, text))

    def record_file(self, rank: int, record: dict) -> None:
        name = _kept_name(stored_text(record["name"]))
        self.arrived.append(Record(
            "dataset", {"name": f"files/run{self.run}/rank{rank}/{name}",
                        "attrs": {"role": stored_text(record["role"]),
                                  "index": int(record["index"]),
                                  "source": stored_text(record["source"])}},
            {"data": np.frombuffer(bytes(record["data"]), dtype=np.uint8)}))

    def _append(self, table: str, row: tuple) -> None:
        """One row; text cells are made storable (NUL bytes, undecodable bytes). It becomes
        an array with the rows next to it in the journal (one costs ~5 us on its own)."""
        dtype = checkpoint.APPEND_TABLES[table]
        self.arrived.append(_Row(table, tuple(
            stored_text(value) if dtype[index].kind == "O" else value
            for index, value in enumerate(row))))

    # ----- experiments -------------------------------------------------------------------
    def experiments(self, grid: Grid, ids: list[str], outputs: list[str],
                    indices: np.ndarray | None = None) -> ExperimentTable:
        """The experiments table of this grid (the file's rows first, on resume; `ids` of
        the experiments at `indices`, all by default); written at once by a checkpoint, so
        the journal only ever holds changes to its rows."""
        existing = self._experiment_rows_so_far()
        self._to_journal()
        rows = experiment_rows(grid, ids, outputs, existing, indices)
        table = Record("experiments", {"keyfields": grid.names, "outputs": outputs},
                       {"rows": rows})
        rebuilt = existing is not None and existing.dtype != rows.dtype
        self._guarded(lambda: self._checkpoint([table], compact=rebuilt))
        self.table = ExperimentTable(rows, self.run)
        return self.table

    def _experiment_rows_so_far(self) -> np.ndarray | None:
        """The experiments table before this sweep: this run's own, none in a file this
        run made (reading it back to find none cost 0.13 s on 64 ranks), else the file's."""
        if self.table is not None:
            return self.table.rows
        if self.created:
            return None
        return snapshot(self.path,
                        lambda file: file["experiments"][()] if "experiments" in file else None)


def _check_resumable(file: Any, path: Path, identity: RunIdentity,
                     force: bool) -> tuple[int, str, int, Shard | None]:
    """(runs so far, file id, journal sequence, shard) of a file this run may continue."""
    fix = "give the results file of an earlier run of this script, or drop --resume"
    if file.attrs.get("format") != FORMAT:
        raise UserError(f"cannot resume: not a distx results file (no format attribute "
                        f"'{FORMAT}')", file=str(path), fix=fix)
    check_version(file, str(path))
    check_structure(file, str(path))
    changed = [key for key in FINGERPRINTS
               if file.attrs.get(f"fingerprint_{key}") != identity.fingerprints[key]]
    if changed and not force:
        written_by = str(from_cell(file.attrs.get("name", "")))
        if written_by != identity.name:
            raise UserError(f"cannot resume: it holds the results of script '{written_by}', "
                            f"not of '{identity.name}'", file=str(path),
                            fix="write to a new --output (--force resumes it anyway)")
        what = {"script": "the script (other than its grid)", "kernels": "the kernels",
                "data": "the data"}
        raise UserError("cannot resume: " + " and ".join(what[key] for key in changed)
                        + " changed since it was written, so its results would not match",
                        file=str(path),
                        fix="write to a new --output, or pass --force to resume anyway")
    shard = _resumed_shard(file_shard(file), identity.shard, path)
    file_id = str(from_cell(file.attrs.get("file_id", ""))) or secrets.token_hex(8)
    return (file["runs"].shape[0] if "runs" in file else 0, file_id,
            int(file.attrs.get("journal_seq", 0)), shard)


def _resumed_shard(held: Shard | None, asked: Shard | None, path: Path) -> Shard | None:
    """A shard file continues its own shard only; --shard may repeat it or be left out."""
    if asked is None or asked == held:
        return held
    if held is None:
        raise UserError(f"cannot resume with --shard {asked}: the file holds all the "
                        "experiments, not a shard", file=str(path),
                        fix="drop --shard, or write the shard to a new --output")
    raise UserError(f"cannot resume with --shard {asked}: the file holds shard {held}",
                    file=str(path), fix=f"pass --shard {held} or leave --shard out")


class _Row(NamedTuple):
    """A row for an append-only table, as it arrived (see _merged_appends)."""

    table: str
    cells: tuple


def _merged_appends(records: list[Record | _Row]) -> list[Record]:
    """Each run of consecutive appends (rows and append records) as one append per table,
    in the order the tables first appear (a table's rows keep their order; nothing else
    is reordered). A record costs ~10 us to encode whatever its size, and a milestone
    round trip made two."""
    merged: list[Record] = []
    run: dict[str, list[tuple | np.ndarray]] = {}

    def end_run() -> None:
        merged.extend(Record("append", {"table": table}, {"rows": _joined(table, parts)})
                      for table, parts in run.items())
        run.clear()
    for record in records:
        if isinstance(record, _Row):
            run.setdefault(record.table, []).append(record.cells)
        elif record.op == "append":
            run.setdefault(record.fields["table"], []).append(record.arrays["rows"])
        else:
            end_run()
            merged.append(record)
    end_run()
    return merged


def _joined(table: str, parts: list[tuple | np.ndarray]) -> np.ndarray:
    """Rows (tuples) and blocks of rows (arrays) of `table`, in order, as one array."""
    blocks: list[np.ndarray] = []
    rows: list[tuple] = []
    for part in parts:
        if isinstance(part, tuple):
            rows.append(part)
        else:
            blocks += _block(table, rows) + [part]
            rows = []
    blocks += _block(table, rows)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _block(table: str, rows: list[tuple]) -> list[np.ndarray]:
    return [np.array(rows, dtype=checkpoint.APPEND_TABLES[table])] if rows else []


def _storable(array: np.ndarray) -> np.ndarray:
    """An array HDF5 can hold: numbers as they are, text and objects as UTF-8 bytes."""
    if array.dtype.kind == "U":
        return np.char.encode(array, "utf-8")
    if array.dtype.hasobject:
        return np.array([stored_text(repr(v)).encode() for v in array.ravel().tolist()],
                        dtype=bytes).reshape(array.shape)
    return array


def _attribute(value: Any) -> Any:
    return stored_text(value) if isinstance(value, (str, bytes)) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


def _kept_name(path: str) -> str:
    """A kept file's path below /files/run<n>/rank<r>/: its folders become groups, and
    components that would climb or vanish in HDF5 ("", ".", "..") are dropped."""
    return "/".join(part for part in path.split("/") if part not in ("", ".", "..")) or "_"
