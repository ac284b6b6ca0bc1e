"""Reading a results file, also while a run writes it: the last checkpoint plus the journal.

The writer never keeps the file at the results path open: it replaces it whole at each
checkpoint. A reader opens the path (always a complete file), and if the journal beside it
holds records newer than that checkpoint, applies them to an in-memory copy: a consistent
snapshot as current as the last journal write (SYNC_SECONDS), without writing anything.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from distx.errors import UserError
from distx.host import available_memory
from distx.results import checkpoint, journal
from distx.results.arrays import ragged_array
from distx.results.layout import APPEND_TABLES, ERRORS, FORMAT, READABLE_VERSIONS, stored_text
from distx.vocabulary import Status

T = TypeVar("T")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class _Moved(Exception):
    """The file was replaced by a checkpoint while being read: read again."""


def snapshot(path: Path, read: Callable[[h5py.File], T], tries: int = 50) -> T:
    """`read(file)` on the current content of a results file (checkpoint + journal)."""
    for _ in range(tries):
        try:
            return _read_once(Path(path), read)
        except _Moved:
            continue
    raise UserError("cannot read the file: a run replaces it faster than it can be read",
                    file=str(path), fix="try again in a moment")


def _read_once(path: Path, read: Callable[[h5py.File], T]) -> T:
    with path.open("rb") as raw:             # pins this version of the file
        pinned = os.fstat(raw.fileno()).st_ino
        with _open(path) as file:
            if os.stat(path).st_ino != pinned:
                raise _Moved
            seq = int(file.attrs.get("journal_seq", 0))
            file_id = str(file.attrs.get("file_id", ""))
            records = journal.after(journal.read(journal.journal_path(path), file_id), seq)
            if records is None:
                raise _Moved
            if not records:
                return read(file)
        with h5py.File(io.BytesIO(raw.read()), "r+") as image:
            checkpoint.apply(image, records)
            return read(image)


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as error:
        raise UserError(f"not a readable HDF5 file ({error})", file=str(path)) from None


def read_results(path: str | Path, read: Callable[[h5py.File], Any], tries: int = 20) -> Any:
    """`read(file)` on a distx results file (also while a run writes it), or explain why
    it cannot be read. A read that fails is tried again as a whole: the file at the path
    is always complete, but a version-1 file may still be written in place by an older
    distx."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", file=str(path), fix="give the path of a results file")

    def checked(file: h5py.File) -> Any:
        if file.attrs.get("format") != FORMAT:
            raise UserError("not a distx results file (no format attribute "
                            f"'{FORMAT}')", file=str(path), fix="give a file written by "
                            "distx run")
        check_version(file, str(path))
        check_structure(file, str(path))
        return read(file)

    for attempt in range(tries):
        try:
            return snapshot(path, checked)
        except (OSError, KeyError, RuntimeError, ValueError) as error:
            if attempt == tries - 1:
                raise UserError(f"the file is damaged: HDF5 cannot read it ({error})",
                                file=str(path), fix="restore it from a copy; `distx recover` "
                                "rebuilds it only when its journal is intact") from None
            time.sleep(0.05)
    raise AssertionError("unreachable")


def format_version(file: h5py.File) -> int:
    return int(file.attrs.get("format_version", 1))


def check_version(file: h5py.File, path: str) -> None:
    version = format_version(file)
    if version not in READABLE_VERSIONS:
        raise UserError(f"written by another distx (results format version {version}; this "
                        f"one reads versions {', '.join(map(str, READABLE_VERSIONS))})",
                        file=path, fix="use the distx version that wrote it")


EXPERIMENT_FIELDS = ("id", "index", "status", "attempts", "rank", "host", "start", "end")
"""What every reader relies on in /experiments, in every readable format version."""


def check_structure(file: h5py.File, path: str) -> None:
    """Refuse a results file whose tables are not what distx writes, with one line.

    A crafted or damaged file (a group where a table belongs, a table without its columns,
    a table of a billion rows) must not become a traceback or an out-of-memory kill in
    show, status, export, load or reset.
    """
    required = {name: dtype.names for name, dtype in APPEND_TABLES.items()}
    required["experiments"] = EXPERIMENT_FIELDS
    budget = available_memory() // 2
    for name, fields in required.items():
        if name not in file:
            continue
        table = file[name]
        problem = _table_problem(table, fields, budget)
        if problem:
            raise UserError(f"not a results file distx can read: /{name} {problem}",
                            file=path, fix="give a file written by distx run")


def _table_problem(table: h5py.Dataset | h5py.Group, fields: tuple[str, ...],
                   budget: int) -> str | None:
    if not isinstance(table, h5py.Dataset) or table.ndim != 1 or table.dtype.names is None:
        return "is not a one-dimensional table"
    missing = [field for field in fields if field not in table.dtype.names]
    if missing:
        return f"lacks the column(s) {', '.join(missing)}"
    size = table.shape[0] * table.dtype.itemsize
    if size > budget:
        return (f"has {table.shape[0]:,} rows ({size / 2**30:.1f} GiB), more than this "
                "host can read into memory")
    return None


def error_texts(file: h5py.File) -> dict[bytes, str]:
    """The error of every experiment in error, by id: the last /errors row of its id."""
    experiments = file["experiments"]
    failed = experiments.fields(["id", "status"])[()]
    failed = set(failed["id"][failed["status"] == Status.ERROR.encoded].tolist())
    rows = error_rows(file)
    return {row_id: _decoded(text) for row_id, text in zip(rows["id"].tolist(),
                                                             rows["error"].tolist())
            if row_id in failed}


def error_rows(file: h5py.File) -> np.ndarray:
    """/errors; for a file before version 3, made from its text columns: the text of every
    failed attempt in /attempts, and an experiment's own error text where no attempt of
    it holds that text (a kernel lost past its Timeout reported no attempt)."""
    if "errors" in file:
        return file["errors"][()]
    rows: list[tuple] = []
    last: dict[bytes, str] = {}
    attempts = file.get("attempts")
    if attempts is not None and "error" in attempts.dtype.names:
        failed = attempts[()]
        failed = failed[failed["status"] == Status.ERROR.encoded]
        for row in failed:
            text = _decoded(row["error"])
            rows.append((row["run"], row["id"], row["part"], row["attempt"], text))
            last[bytes(row["id"])] = text
    experiments = file.get("experiments")
    if experiments is not None and "error" in experiments.dtype.names:
        latest = file["runs"].shape[0] - 1 if "runs" in file else 0
        table = experiments[()]
        for row in table[table["status"] == Status.ERROR.encoded]:
            text = _decoded(row["error"])
            if text and last.get(bytes(row["id"])) != text:
                rows.append((latest, row["id"], 0, row["attempts"], text))
    errors = np.zeros(len(rows), dtype=ERRORS)
    for position, row in enumerate(rows):
        errors[position] = (*row[:4], stored_text(row[4]))
    return errors


def _decoded(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def experiment_arrays(file: h5py.File) -> dict[str, list[np.ndarray | None]]:
    """Every array output as a list over the rows of /experiments (None: no array): one
    dataset (or ragged group) per output in version 3, one dataset per output and
    experiment id, under /experiment_arrays/<output>/<id>, before."""
    stored = file.get(checkpoint.ARRAYS)
    if stored is None or "experiments" not in file:
        return {}
    rows = file["experiments"].fields(["id", "status"])[()]
    if format_version(file) < 3:
        ids = [row_id.decode() for row_id in rows["id"].tolist()]
        return {output: [group[row_id][()] if row_id in group else None for row_id in ids]
                for output, group in stored.items()}
    found = {}
    for output, item in stored.items():
        if isinstance(item, h5py.Dataset):       # one shape: a row per experiment
            data, done = item[()], rows["status"] == Status.DONE.encoded
            found[output] = [data[row] if row < len(data) and done[row] else None
                             for row in range(len(rows))]
        else:                                    # ragged: values, start, shape
            values, starts, shapes = item["values"][()], item["start"][()], item["shape"][()]
            found[output] = [ragged_array(values, starts[row], shapes[row])
                             if row < len(starts) and starts[row] >= 0 else None
                             for row in range(len(rows))]
    return found
