"""A results file of an older format version brought to this one (by `--resume`).

Version 3 moved the error texts out of /experiments and /attempts into /errors, stores
fixed-width text NUL-terminated, and keeps each array output in one dataset instead of one
per experiment (layout.py, arrays.py). `upgrade_records` are the journal records that
rebuild those objects; the writer applies them in the first checkpoint of the resumed run,
which replaces the file whole, so a run killed before it leaves the old file as it was.
The readers (show, status, export, distx.load, merge) read older files as they are.
"""

from __future__ import annotations

import h5py
import numpy as np

from distx.results.arrays import pack
from distx.results.checkpoint import arrays_record
from distx.results.journal import Record
from distx.results.layout import ATTEMPTS, FORMAT_VERSION, experiment_dtype
from distx.results.reader import error_rows, experiment_arrays
from distx.script.grid import column_type, from_cell


def upgrade_records(file: h5py.File) -> list[Record]:
    """The records that make `file` (of version 1 or 2) a file of FORMAT_VERSION."""
    records = []
    if "attempts" in file:
        records.append(Record("table", {"name": "attempts"},
                              {"rows": converted(file["attempts"][()], ATTEMPTS)}))
    errors = error_rows(file)
    if len(errors):
        records.append(Record("append", {"table": "errors"}, {"rows": errors}))
    if "experiments" in file:
        records += _experiments(file)
    records.append(Record("attrs", {"attrs": {"format_version": FORMAT_VERSION}}))
    return records


def _experiments(file: h5py.File) -> list[Record]:
    """The experiments table without its error column, and its array outputs."""
    table = file["experiments"]
    old = table[()]
    keyfields, outputs = (_names(table.attrs.get(key)) for key in ("keyfields", "outputs"))
    types = {name: column_type([from_cell(value) for value in np.unique(old[name])] or [0])
             for name in keyfields}
    records = [Record("experiments", {"keyfields": keyfields, "outputs": outputs},
                      {"rows": converted(old, experiment_dtype(types, outputs))}),
               Record("delete", {"name": "experiment_arrays"})]
    for output, cells in experiment_arrays(file).items():
        rows = np.array([row for row, array in enumerate(cells) if array is not None],
                        dtype=np.int64)
        if len(rows):
            block = pack([cells[row] for row in rows.tolist()])
            records.append(arrays_record(output, rows, block))
    return records


def converted(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows as `dtype`, field by field (columns it lacks are left out)."""
    result = np.zeros(len(rows), dtype=dtype)
    for name in dtype.names:
        if name in rows.dtype.names:
            result[name] = rows[name]
    return result


def _names(value: object) -> list[str]:
    return [] if value is None else [str(from_cell(name)) for name in np.atleast_1d(value)]
