"""The results file's layout: format version, table dtypes, reserved column names.

Everything that fixes how a results file looks on disk lives here, so that the writer, the
readers, the journal and the administration commands agree on one definition.

    /                    attrs: format, format_version, journal_seq, file_id, name, run_id,
                         state, exit_code, started, ended, world_size, command_line,
                         script_sha256, fingerprint_script/_kernels/_data, versions,
                         shard_index, shard_count (a --shard file only)
    /runs                table RUNS (a row per run: the first and every --resume)
    /script              the script text (scalar string), attrs: path, sha256
    /provenance/hosts    host name of every rank (latest run)
    /experiments         table: EXPERIMENT_COLUMNS around the keyfields, one float64
                         column per output; attrs keyfields, outputs
    /attempts            table ATTEMPTS (a row per task run)
    /errors              table ERRORS: the text of every failed attempt
    /experiment_arrays/<output>   array outputs, a row per experiment (arrays.py)
    /milestones, /values, /tasks, /logs   tables of the same names below
    /value_arrays/run<n>/rank<r>/<i>  published arrays (the values row holds the path)
    /files/run<n>/rank<r>/<name>      kept files as uint8 datasets, attrs: role, index, source
    /sources             table SOURCES (a merged file: where each of its runs came from)
    /conflicts           a merged file: done rows that lost to another done row of
                         the same id (the experiments columns and `file`)
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from distx.script.shard import Shard

FORMAT = "distx-results"
FORMAT_VERSION = 3
"""1: written in place (distx before the journal). 2: replaced whole at checkpoints, with
`journal_seq` and `file_id` attributes and numbered /value_arrays names. 3: /experiments
and /attempts of fixed-width columns only (readable by pandas.read_hdf), error texts in
/errors, fixed-width text NUL-terminated, array outputs one dataset per output."""
READABLE_VERSIONS = (1, 2, 3)

TEXT = h5py.string_dtype()


def fixed_text(width: int) -> str:
    """A fixed-width text column for up to `width` bytes, and the NUL that ends them: it is
    stored NUL-terminated (stored_type), so h5dump and PyTables show the text without its
    padding, and a value of exactly `width` bytes keeps its last byte."""
    return f"S{width + 1}"


ID = fixed_text(16)
STATUS = fixed_text(7)
HOST = fixed_text(64)
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
# Fixed-width columns only: pandas.read_hdf (PyTables) reads no variable-length text, and
# a sweep writes this table at up to 100,000 rows a second.
ATTEMPTS = np.dtype([("run", "i4"), ("id", ID), ("part", "i4"), ("attempt", "i4"),
                     ("rank", "i4"), ("host", HOST), ("start", "f8"), ("end", "f8"),
                     ("status", STATUS)])
ERRORS = np.dtype([("run", "i4"), ("id", ID), ("part", "i4"), ("attempt", "i4"),
                   ("error", TEXT)])
"""/errors: the whole text of each failed attempt, keyed like its /attempts row by (id,
part, attempt). An experiment in error failed with the text of the last row of its id."""
SOURCES = np.dtype([("run", "i4"), ("file", TEXT), ("file_id", TEXT), ("source_run", "i4"),
                    ("shard", TEXT)])
"""A merged file's /sources: for each of its runs, the file it was first written in, that
file's id and run number there, and the shard it held ("" for all the experiments)."""
APPEND_TABLES = {"runs": RUNS, "milestones": MILESTONES, "values": VALUES, "tasks": TASKS,
                 "logs": LOGS, "attempts": ATTEMPTS, "errors": ERRORS}

EXPERIMENT_HEAD = [("id", ID), ("index", "i8")]
EXPERIMENT_TAIL = [("status", STATUS), ("attempts", "i4"), ("rank", "i4"), ("host", HOST),
                   ("start", "f8"), ("end", "f8")]
EXPERIMENT_COLUMNS = (*(name for name, _ in EXPERIMENT_HEAD + EXPERIMENT_TAIL), "error")
"""The experiments table's own columns (and `error`, which readers join from /errors): no
keyfield or output may take one of these names."""


def experiment_state(dtype: np.dtype) -> list[str]:
    """The columns of an experiments table that a run changes: status to the last output
    (id, index and the keyfields are fixed when a row is made)."""
    return list(dtype.names[dtype.names.index(EXPERIMENT_TAIL[0][0]):])


def experiment_dtype(keyfields: dict[str, str], outputs: list[str]) -> np.dtype:
    """The experiments table: id, index, the keyfields (text as fixed_text of its longest
    value; column_type's "S<n>"), status..end, the outputs."""
    columns = [(name, fixed_text(int(kind[1:])) if kind.startswith("S") else kind)
               for name, kind in keyfields.items()]
    return np.dtype(EXPERIMENT_HEAD + columns + EXPERIMENT_TAIL
                    + [(name, "f8") for name in outputs])


def stored_type(dtype: np.dtype) -> h5py.Datatype | np.dtype:
    """The HDF5 type a table or array of `dtype` is stored as: fixed-width text
    NUL-terminated (h5py would pad it with NULs, which h5dump prints as runs of \\000),
    everything else as h5py stores it. A table's text columns are fixed_text, with room
    for the NUL; an array of text gets that byte here."""
    if dtype.kind != "S" and not (dtype.names and any(dtype[name].kind == "S"
                                                      for name in dtype.names)):
        return dtype
    if dtype.names is None:     # an array of text: one byte more for the terminating NUL
        return h5py.Datatype(_member_type(np.dtype(f"S{dtype.itemsize + 1}")))
    compound = h5py.h5t.create(h5py.h5t.COMPOUND, dtype.itemsize)
    for name in dtype.names:
        compound.insert(name.encode(), dtype.fields[name][1], _member_type(dtype[name]))
    return h5py.Datatype(compound)


def _member_type(dtype: np.dtype) -> h5py.h5t.TypeID:
    if dtype.kind != "S":
        return h5py.h5t.py_create(dtype, logical=True)
    text = h5py.h5t.C_S1.copy()
    text.set_size(dtype.itemsize)
    text.set_strpad(h5py.h5t.STR_NULLTERM)
    return text


def stored_text(value: Any) -> str:
    """Any text as HDF5 can store it: valid UTF-8 without NUL bytes.

    HDF5 variable-length strings end at NUL and must encode; undecodable bytes (kept by
    surrogateescape) and NULs are written as backslash escapes, so nothing is refused.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    elif not isinstance(value, str):
        value = str(value)
    if value.isascii() and "\0" not in value:
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\x00")


def shard_attributes(shard: Shard | None) -> dict[str, int]:
    """The root attributes that say which shard a file holds (none: all experiments)."""
    return {} if shard is None else {"shard_index": shard.index, "shard_count": shard.count}


def file_shard(file: h5py.File) -> Shard | None:
    """The shard a results file holds, None for a file of all the experiments."""
    if "shard_count" not in file.attrs:
        return None
    return Shard(int(file.attrs["shard_index"]), int(file.attrs["shard_count"]))
