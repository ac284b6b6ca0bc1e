"""`distx export results.h5 --csv FILE --table NAME`: a table of a results file as CSV."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import h5py
import numpy as np

from distx.errors import UserError
from distx.results.reader import error_rows, error_texts, read_results

TABLES = ("experiments", "attempts", "errors", "milestones", "values", "tasks", "logs", "runs",
          "sources", "conflicts")


def export_csv(path: str | Path, table: str, destination: str) -> int:
    """Write `table` as CSV to `destination` ("-" for stdout); return the number of rows."""
    if table not in TABLES:
        raise UserError(f"unknown table '{table}'", fix=f"use one of: {', '.join(TABLES)}")
    rows = read_results(path, lambda file: _table(file, table))
    if rows is None:
        raise UserError(f"{path} has no {table} table",
                        fix="this run had no sweep" if table == "experiments" else None)
    if destination == "-":
        _write(rows, sys.stdout)
    else:
        with Path(destination).open("w", newline="", encoding="utf-8") as out:
            _write(rows, out)
    return len(rows)


def _table(file: h5py.File, table: str) -> np.ndarray | None:
    """The rows of `table`; the experiments with the error text of each joined from
    /errors (a column of their own before format version 3, where /errors is made from
    the text columns)."""
    if table == "errors" and "experiments" in file:
        return error_rows(file)
    if table not in file:
        return None
    rows = file[table][()]
    if table != "experiments" or "error" in rows.dtype.names:
        return rows
    texts = error_texts(file)
    joined = np.empty(len(rows), dtype=[(name, rows.dtype[name]) for name in rows.dtype.names]
                      + [("error", object)])
    for name in rows.dtype.names:
        joined[name] = rows[name]
    joined["error"] = [texts.get(row_id, "") for row_id in rows["id"].tolist()]
    return joined


def _write(rows, out) -> None:
    writer = csv.writer(out)
    writer.writerow(rows.dtype.names)
    for row in rows:
        writer.writerow([_cell(value) for value in row])


def _cell(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value.item() if hasattr(value, "item") else value
