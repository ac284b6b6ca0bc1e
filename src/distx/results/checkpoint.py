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

from distx.results.arrays import ArrayBlock, Layout, fill_value, pack, ragged_array
from distx.results.journal import Record
from distx.results.layout import (
    APPEND_TABLES,
    FORMAT,
    FORMAT_VERSION,
    TEXT,
    stored_text,
    stored_type,
)
from distx.vocabulary import Status

REPLACING = ("experiments", "table", "delete")
"""Operations that replace (or remove) an object whole: a compacting checkpoint does not
copy what they replace."""


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
            _copy_objects(path, temporary, skip={
                record.fields.get("name", "experiments") for record in records
                if record.op in REPLACING})
        else:
            shutil.copyfile(path, temporary)
        with h5py.File(temporary, "r+") as file:
            apply(file, records)
            if edit is not None:
                edit(file)
            # A file of an older version keeps it until upgrade.py's records say otherwise;
            # any checkpoint makes a version-1 file (written in place) a version-2 one.
            version = FORMAT_VERSION if fresh else max(2, int(file.attrs.get(
                "format_version", 1)))
            file.attrs.update({"format": FORMAT, "format_version": version,
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
    """Apply records in order, where order matters: a run of experiment row updates and
    appends is written as one write per table.

    The writer journals a run of appends as one record per table, but runs separated by
    other records, and journals written before that, still hold many small ones; applied
    one by one (a resize and a write each, about 0.4 ms), 40,000 one-milestone records held
    rank 0 in checkpoints for 18 s."""
    batch: list[Record] = []
    for record in records:
        if record.op in ("rows", "append"):
            batch.append(record)
            continue
        _apply_batch(file, batch)
        batch = []
        APPLY[record.op](file, record)
    _apply_batch(file, batch)


def _apply_batch(file: h5py.File, records: list[Record]) -> None:
    """Row updates and appends: each touches only its own table, in its own order."""
    rows = [record for record in records if record.op == "rows"]
    if rows:
        _apply_rows(file, rows)
    appended: dict[str, list[np.ndarray]] = {}
    for record in records:
        if record.op == "append":
            appended.setdefault(record.fields["table"], []).append(record.arrays["rows"])
    for name, blocks in appended.items():
        _append(file, name, blocks)


def _apply_rows(file: h5py.File, records: list[Record]) -> None:
    """Experiment rows by position, as one read-modify-write of the span they cover. A
    checkpoint's records hold whole rows; the journal's the columns a run changes."""
    dataset = file["experiments"]
    low = min(int(record.arrays["positions"][0]) for record in records)
    high = max(int(record.arrays["positions"][-1]) for record in records) + 1
    covered = np.zeros(high - low, dtype=bool)
    for record in records:
        covered[record.arrays["positions"] - low] = True
    whole_rows = all(record.arrays["rows"].dtype.names == dataset.dtype.names
                     for record in records)
    # A sweep changes rows in order: when the records cover the whole span, skip reading it.
    span = np.empty(high - low, dtype=dataset.dtype) if covered.all() and whole_rows \
        else dataset[low:high]
    for record in records:
        where, rows = record.arrays["positions"] - low, record.arrays["rows"]
        if rows.dtype.names == dataset.dtype.names:
            span[where] = _as(rows, dataset.dtype)
            continue
        for name in rows.dtype.names:
            span[name][where] = rows[name]
    _write_rows(dataset, low, span)


def _append(file: h5py.File, name: str, blocks: list[np.ndarray]) -> None:
    dtype = APPEND_TABLES[name]
    dataset = file[name] if name in file else _create_table(file, name, dtype)
    rows = np.concatenate([_as(block, dataset.dtype) for block in blocks])
    start = dataset.shape[0]
    dataset.resize((start + len(rows),))
    _write_rows(dataset, start, rows)


def _create_table(file: h5py.File, name: str, dtype: np.dtype,
                  rows: np.ndarray | None = None) -> h5py.Dataset:
    """An appendable table (with `rows`, if given)."""
    count = 0 if rows is None else len(rows)
    table = file.create_dataset(name, shape=(count,), maxshape=(None,),
                                dtype=stored_type(dtype), chunks=(1024,))
    if count:
        _write_rows(table, 0, rows)
    return table


def _write_rows(dataset: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """`rows` (in the dataset's dtype) into the table from row `start`.

    Rows without variable-length text go in as the file stores them: HDF5 would otherwise
    convert every fixed-width text cell from numpy's NUL padding to the stored NUL
    termination (stored_type), one field at a time, which took 3x as long as the write
    itself (a 200,000-row experiments table: 46 against 15 ms). The bytes are the same:
    a fixed_text column has room for its NUL, and numpy pads with NULs.
    """
    stop = start + len(rows)
    if not len(rows):
        return
    if any(rows.dtype[name].kind == "O" for name in rows.dtype.names):
        dataset[start:stop] = rows
        return
    stored = dataset.id.get_type()
    if stored.get_size() != rows.dtype.itemsize:
        raise ValueError(f"rows of {rows.dtype.itemsize} bytes for a table of "
                         f"{stored.get_size()}-byte rows")
    selection = dataset.id.get_space()
    selection.select_hyperslab((start,), (len(rows),))
    dataset.id.write(h5py.h5s.create_simple((len(rows),)), selection,
                     np.ascontiguousarray(rows), mtype=stored)


def _apply_table(file: h5py.File, record: Record) -> None:
    """A table replaced whole (a file of an older version brought to this one)."""
    name = record.fields["name"]
    if name in file:
        del file[name]
    rows = record.arrays["rows"]
    _create_table(file, name, _h5_dtype(rows.dtype), _as(rows, _h5_dtype(rows.dtype)))


def _apply_delete(file: h5py.File, record: Record) -> None:
    if record.fields["name"] in file:
        del file[record.fields["name"]]


def _apply_experiments(file: h5py.File, record: Record) -> None:
    """The experiments table of a sweep: new (a first sweep, or a column that changed type
    on resume), or the existing one with the grid's new experiments appended."""
    rows = record.arrays["rows"]
    if "experiments" in file:
        existing = file["experiments"]
        if existing.dtype == _h5_dtype(rows.dtype) and len(existing) <= len(rows):
            start = len(existing)
            existing.resize((len(rows),))
            _write_rows(existing, start, _as(rows[start:], existing.dtype))
            _fit_arrays(file, len(rows))
            return
        del file["experiments"]
    dtype = _h5_dtype(rows.dtype)
    dataset = file.create_dataset("experiments", shape=rows.shape, maxshape=(None,),
                                  dtype=stored_type(dtype), chunks=True)
    _write_rows(dataset, 0, _as(rows, dtype))
    dataset.attrs["keyfields"] = record.fields["keyfields"]
    dataset.attrs["outputs"] = record.fields["outputs"]
    _fit_arrays(file, len(rows))


# ----- array outputs (layouts: arrays.py) ------------------------------------------------------
ARRAYS = "experiment_arrays"


def _fit_arrays(file: h5py.File, length: int) -> None:
    """Array outputs as long as the experiments table (new experiments of a resume)."""
    for item in file.get(ARRAYS, {}).values():
        for dataset in (item,) if isinstance(item, h5py.Dataset) else (item["start"],
                                                                       item["shape"]):
            if dataset.shape[0] < length:
                dataset.resize(length, axis=0)


def arrays_record(output: str, rows: np.ndarray, block: ArrayBlock) -> Record:
    """The record of the arrays of output `output` at experiment rows `rows`."""
    return Record("arrays", {"output": output}, {
        "rows": rows, "values": block.values,
        **({"shapes": block.shapes} if block.ragged else {})})


def _apply_arrays(file: h5py.File, record: Record) -> None:
    """A block of one output's arrays at experiment rows `rows`. When the block does not fit
    the stored layout (another shape, a wider dtype), the arrays stored so far are
    rewritten first in the layout that holds both."""
    name = f"{ARRAYS}/{record.fields['output']}"
    block = ArrayBlock(record.arrays["values"], record.arrays.get("shapes"))
    stored = file.get(name)
    if stored is None:
        stored = _create_arrays(file, name, Layout.of(block))
    elif not stored_layout(stored).holds(Layout.of(block)):
        kept = _rows_with_arrays(file, stored)
        old = _read_block(stored, kept)
        layout = stored_layout(stored).joined(Layout.of(block))
        del file[name]
        stored = _create_arrays(file, name, layout)
        _write_arrays(stored, kept, old)
    _write_arrays(stored, record.arrays["rows"], block)


def _rows_with_arrays(file: h5py.File, stored: h5py.Dataset | h5py.Group) -> np.ndarray:
    """The rows whose arrays a layout holds: for one shape, those of done experiments
    (arrays are recorded with the row that makes them done, and before it)."""
    if isinstance(stored, h5py.Group):
        return np.flatnonzero(stored["start"][()] >= 0)
    return np.flatnonzero(file["experiments"].fields("status")[()] == Status.DONE.encoded)


def stored_layout(stored: h5py.Dataset | h5py.Group) -> Layout:
    """The layout of an array output in a version-3 file."""
    if isinstance(stored, h5py.Dataset):
        return Layout(stored.shape[1:], stored.dtype)
    return Layout(None, stored["values"].dtype)


def _create_arrays(file: h5py.File, name: str, layout: Layout) -> h5py.Dataset | h5py.Group:
    rows = len(file["experiments"])
    if layout.shape is not None:
        row_bytes = max(1, int(np.prod(layout.shape)) * layout.dtype.itemsize)
        return file.create_dataset(
            name, shape=(rows, *layout.shape), maxshape=(None, *layout.shape),
            dtype=layout.dtype, fillvalue=fill_value(layout.dtype),
            chunks=(max(1, min(rows or 1, (1 << 18) // row_bytes)), *layout.shape))
    group = file.create_group(name)
    group.create_dataset("values", shape=(0,), maxshape=(None,), dtype=layout.dtype,
                         chunks=(1 << 15,))
    group.create_dataset("start", shape=(rows,), maxshape=(None,), dtype="i8",
                         fillvalue=-1, chunks=(1 << 12,))
    group.create_dataset("shape", shape=(rows, 1), maxshape=(None, None), dtype="i8",
                         fillvalue=-1, chunks=(1 << 12, 1))
    return group


def _read_block(stored: h5py.Dataset | h5py.Group, rows: np.ndarray) -> ArrayBlock:
    if isinstance(stored, h5py.Dataset):
        return ArrayBlock(stored[()][rows])
    values, starts, shapes = stored["values"][()], stored["start"][()], stored["shape"][()]
    return pack([ragged_array(values, starts[row], shapes[row]) for row in rows.tolist()])


def _write_arrays(target: h5py.Dataset | h5py.Group, rows: np.ndarray,
                  block: ArrayBlock) -> None:
    """Write `block` at `rows` (the last of a row given twice wins), slice by slice."""
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    last = np.append(rows[1:] != rows[:-1], True)
    chosen = order[last]
    rows = rows[last]
    if not len(rows):
        return
    needed = int(rows[-1]) + 1
    if isinstance(target, h5py.Dataset):
        if target.shape[0] < needed:
            target.resize(needed, axis=0)
        values = block.values[chosen]
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for low, high in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            target[int(rows[low]):int(rows[high - 1]) + 1] = values[low:high]
        return
    _write_ragged(target, rows, [block.arrays()[i] for i in chosen.tolist()], needed)


def _write_ragged(group: h5py.Group, rows: np.ndarray, arrays: list[np.ndarray],
                  needed: int) -> None:
    """Arrays appended to `values`, where and what shape each is set in its row."""
    values = group["values"]
    flat = np.concatenate([array.ravel() for array in arrays]) if arrays else np.zeros(0)
    sizes = np.array([array.size for array in arrays], dtype=np.int64)
    first = values.shape[0]
    values.resize((first + len(flat),))
    values[first:] = flat
    ndim = max([array.ndim for array in arrays] + [group["shape"].shape[1]])
    for dataset in (group["start"], group["shape"]):
        if dataset.shape[0] < needed:
            dataset.resize(needed, axis=0)
    if group["shape"].shape[1] < ndim:
        group["shape"].resize(ndim, axis=1)
    shapes = np.full((len(arrays), ndim), -1, dtype=np.int64)
    for position, array in enumerate(arrays):
        shapes[position, :array.ndim] = array.shape
    starts = first + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    group["start"][rows] = starts
    group["shape"][rows] = shapes


def _apply_dataset(file: h5py.File, record: Record) -> None:
    name = record.fields["name"]
    if name in file:
        del file[name]
    if "text" in record.fields:
        dataset = file.create_dataset(name, data=stored_text(record.fields["text"]), dtype=TEXT)
    else:
        data = record.arrays["data"]
        dataset = file.create_dataset(name, shape=data.shape, dtype=stored_type(
            _h5_dtype(data.dtype) if data.dtype.names else data.dtype))
        if data.size:
            dataset[...] = data
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
    "experiments": _apply_experiments, "dataset": _apply_dataset,
    "attrs": _apply_attrs, "run_end": _apply_run_end, "arrays": _apply_arrays,
    "table": _apply_table, "delete": _apply_delete}


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
