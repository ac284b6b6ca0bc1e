"""`distx.load`: the tables of results files as pandas DataFrames.

pandas is imported by `load` only: ranks import distx, and must not pay for pandas.
Columns come out as a person expects them in a notebook: text as `str` (HDF5 hands
fixed-width and variable-length strings back as bytes), times as UTC timestamps,
keyfields and outputs in their own types, the error text of each experiment joined
from /errors by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from distx.errors import UserError
from distx.results.reader import error_rows, error_texts, experiment_arrays, read_results
from distx.results.show import expand_paths

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("experiments", "attempts", "milestones", "values", "tasks", "logs", "runs", "errors")
TIME_COLUMNS = ("start", "end", "time", "started", "ended")
"""Columns holding seconds since the epoch: loaded as UTC timestamps (NaN: NaT)."""


def load(paths: str | Path | Iterable[str | Path], table: str = "experiments", *,
         arrays: bool = False) -> pd.DataFrame:
    """A table of one results file, or the union of several (a list, or a pattern such as
    'shard-*.h5'), as a DataFrame; also of a file a run is writing (a consistent snapshot:
    the last checkpoint plus the journal).

    table: experiments (default), attempts, milestones, values, tasks, logs, runs, errors.
    arrays: array outputs (experiments) and published arrays (values) as numpy arrays in
    their cells, instead of NaN and the dataset's path.
    With several files, experiments are united by id (an experiment in two files counts
    once: the row of the first file that has it), other tables concatenated; a `file`
    column then says where each row comes from.
    """
    try:
        import pandas as pd
    except ImportError:
        raise UserError("distx.load needs pandas, which is not installed",
                        fix="pip install 'distx[analysis]'") from None
    if table not in TABLES:
        raise UserError(f"no table '{table}' in a results file",
                        fix=f"use one of: {', '.join(TABLES)}")
    files = expand_paths(paths)
    frames = [read_results(path, lambda file: _frame(file, table, arrays)) for path in files]
    if len(files) > 1:
        for path, frame in zip(files, frames):
            frame["file"] = str(path)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if table == "experiments" and len(files) > 1:
        frame = frame.drop_duplicates("id", keep="first", ignore_index=True)
    return frame


def _frame(file: h5py.File, table: str, arrays: bool) -> pd.DataFrame:
    import pandas as pd

    if table == "errors":
        rows = error_rows(file)
    elif table in file:
        rows = file[table][()]
    else:                        # a file of a run that has not started its sweep yet
        return pd.DataFrame()
    frame = pd.DataFrame({name: _column(rows[name]) for name in rows.dtype.names})
    for name in TIME_COLUMNS:
        if name in frame:
            frame[name] = pd.to_datetime(frame[name], unit="s", utc=True)
    if table == "experiments":
        texts = error_texts(file)
        frame["error"] = [texts.get(row_id.encode(), "") for row_id in frame["id"]]
        if arrays:
            _experiment_arrays(file, frame)
    if table == "values" and arrays:
        is_array = frame["kind"] == "array"
        frame.loc[is_array, "value"] = pd.Series(
            [file[path][()] for path in frame.loc[is_array, "value"]],
            index=frame.index[is_array], dtype=object)
    return frame


def _column(values: np.ndarray) -> np.ndarray | list:
    """Text cells as str, anything else as it is."""
    if values.dtype.kind in "SO":
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                for value in values.tolist()]
    return values


def _experiment_arrays(file: h5py.File, frame: pd.DataFrame) -> None:
    """Each array output's cells as its arrays (arrays.py), where an experiment has one."""
    for output, arrays in experiment_arrays(file).items():
        before = frame[output].tolist() if output in frame else [None] * len(frame)
        frame[output] = [value if array is None else array
                         for array, value in zip(arrays, before)]
