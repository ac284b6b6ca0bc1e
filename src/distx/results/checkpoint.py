"""Checkpoints: the results file is only ever replaced whole.

A checkpoint copies the current file (or starts an empty one) under a unique temporary
name beside it, applies journal records to the copy, records the last sequence number it
holds (`journal_seq`), flushes and fsyncs it, renames it over the results path and fsyncs
the folder. A process killed at any moment leaves the path naming the previous checkpoint
or the new one, never a mix; the journal holds every change after it. HDF5 does not make
in-place updates crash-consistent (a flush interrupted between writing objects and the
superblock leaves dangling addresses), which is why the file at the path is never written.

`apply` is the one place that turns records into HDF5 changes: the writer's checkpoints,
`distx recover` and the readers' snapshot of a live run all go through it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from distx.results.journal import Record
from distx.results.layout import APPEND_TABLES, FORMAT, FORMAT_VERSION, TEXT, stored_text


def replace(path: Path, records: list[Record], seq: int, file_id: str, *, fresh: bool = False,
            compact: bool = False, edit: Callable[[h5py.File], None] | None = None) -> None:
    """Write the file at `path` anew: its current content (none if `fresh`) plus `records`
    and `edit`, as a checkpoint holding the journal up to `seq`.

    The content is copied byte for byte, or with `compact` object by object into a new
    file, which leaves out the space that deleted and rewritten objects held (HDF5 never
    gives it back): at close and when the experiments table is rebuilt.
    """
    _check_room(path, records, fresh)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if fresh:
            with h5py.File(temporary, "w") as file:
                for name, dtype in APPEND_TABLES.items():
                    _create_table(file, name, dtype)
        elif compact:
            _copy_objects(path, temporary, skip={"experiments"} if any(
                record.op == "experiments" for record in records) else set())
        else:
            shutil.copyfile(path, temporary)
        with h5py.File(temporary, "r+") as file:
            apply(file, records)
            if edit is not None:
                edit(file)
            file.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION,
                               "file_id": file_id, "journal_seq": seq})
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _check_room(path: Path, records: list[Record], fresh: bool) -> None:
    """Refuse a checkpoint that cannot fit before writing any of it: HDF5 meeting a full
    disk halfway fails with errors of its own, in places it cannot report cleanly."""
    needed = sum(array.nbytes for record in records for array in record.arrays.values())
    needed = needed * 3 // 2 + (0 if fresh else path.stat().st_size) + (1 << 18)
    folder = os.statvfs(path.parent)
    if folder.f_bavail * folder.f_frsize < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a checkpoint needs "
                      f"{needed / 2**20:.1f} MiB)")


def _copy_objects(source: Path, target: Path, skip: set[str]) -> None:
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        new.attrs.update(old.attrs)
        for name in old:
            if name not in skip:
                old.copy(old[name], new, name=name)


def leftovers(path: Path) -> list[Path]:
    """Temporary files of checkpoints that a killed writer of `path` never finished."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----- records to HDF5 -------------------------------------------------------------------------
def apply(file: h5py.File, records: list[Record]) -> None:
    """Apply records in order; consecutive experiment row updates are written together."""
    rows: list[Record] = []
    for record in records:
        if record.op == "rows":
            rows.append(record)
            continue
        if rows:
            _apply_rows(file, rows)
            rows = []
        APPLY[record.op](file, record)
    if rows:
        _apply_rows(file, rows)


def _apply_rows(file: h5py.File, records: list[Record]) -> None:
    """Experiment rows by position, as one read-modify-write of the span they cover."""
    dataset = file["experiments"]
    low = min(int(record.arrays["positions"][0]) for record in records)
    high = max(int(record.arrays["positions"][-1]) for record in records) + 1
    covered = np.zeros(high - low, dtype=bool)
    for record in records:
        covered[record.arrays["positions"] - low] = True
    # A sweep changes rows in order: when the records cover the whole span, skip reading it.
    span = np.empty(high - low, dtype=dataset.dtype) if covered.all() else dataset[low:high]
    for record in records:
        span[record.arrays["positions"] - low] = _as(record.arrays["rows"], dataset.dtype)
    dataset[low:high] = span


def _apply_append(file: h5py.File, record: Record) -> None:
    name = record.fields["table"]
    dtype = APPEND_TABLES[name]
    dataset = file[name] if name in file else _create_table(file, name, dtype)
    rows = _as(record.arrays["rows"], dataset.dtype)
    start = dataset.shape[0]
    dataset.resize((start + len(rows),))
    dataset[start:] = rows


def _create_table(file: h5py.File, name: str, dtype: np.dtype) -> h5py.Dataset:
    return file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype,
                               chunks=(1024,))


def _apply_experiments(file: h5py.File, record: Record) -> None:
    """The experiments table of a sweep: new (a first sweep, or a column that changed type
    on resume), or the existing one with the grid's new experiments appended."""
    rows = record.arrays["rows"]
    if "experiments" in file:
        existing = file["experiments"]
        if existing.dtype == _h5_dtype(rows.dtype) and len(existing) <= len(rows):
            start = len(existing)
            existing.resize((len(rows),))
            existing[start:] = _as(rows[start:], existing.dtype)
            return
        del file["experiments"]
    dataset = file.create_dataset("experiments", data=_as(rows, _h5_dtype(rows.dtype)),
                                  maxshape=(None,), chunks=True)
    dataset.attrs["keyfields"] = record.fields["keyfields"]
    dataset.attrs["outputs"] = record.fields["outputs"]


def _apply_dataset(file: h5py.File, record: Record) -> None:
    name = record.fields["name"]
    if name in file:
        del file[name]
    if "text" in record.fields:
        dataset = file.create_dataset(name, data=stored_text(record.fields["text"]), dtype=TEXT)
    else:
        dataset = file.create_dataset(name, data=record.arrays["data"])
    dataset.attrs.update(record.fields.get("attrs", {}))


def _apply_attrs(file: h5py.File, record: Record) -> None:
    file.attrs.update(record.fields["attrs"])


def _apply_run_end(file: h5py.File, record: Record) -> None:
    runs = file["runs"]
    row = runs[record.fields["run"]]
    row["ended"] = record.fields["ended"]
    row["state"] = record.fields["state"]
    row["exit_code"] = record.fields["exit_code"]
    runs[record.fields["run"]] = row


APPLY: dict[str, Callable[[h5py.File, Record], None]] = {
    "append": _apply_append, "experiments": _apply_experiments, "dataset": _apply_dataset,
    "attrs": _apply_attrs, "run_end": _apply_run_end}


def _h5_dtype(dtype: np.dtype) -> np.dtype:
    """Text (object) fields as HDF5 variable-length strings."""
    return np.dtype([(name, TEXT if dtype[name].kind == "O" else dtype[name])
                     for name in dtype.names])


def _as(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows in the table's dtype, field by field (a journal loses h5py's text marks)."""
    if rows.dtype == dtype:
        return rows
    converted = np.zeros(len(rows), dtype=dtype)
    for name in dtype.names:
        if name in rows.dtype.names:
            converted[name] = rows[name]
    return converted
