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
    /attempts            table ATTEMPTS
    /experiment_arrays/<output>/<id>   array outputs, linked by experiment id
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
FORMAT_VERSION = 2
"""1: written in place (distx before the journal). 2: replaced whole at checkpoints, with
`journal_seq` and `file_id` attributes and numbered /value_arrays names."""
READABLE_VERSIONS = (1, 2)

TEXT = h5py.string_dtype()
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
# Fixed-length text where it is short: variable-length columns cost a conversion per row
# on every write, and a sweep writes this table at up to 100,000 rows a second.
ATTEMPTS = np.dtype([("run", "i4"), ("id", "S16"), ("part", "i4"), ("attempt", "i4"),
                     ("rank", "i4"), ("host", "S64"), ("start", "f8"), ("end", "f8"),
                     ("status", "S8"), ("error", TEXT)])
SOURCES = np.dtype([("run", "i4"), ("file", TEXT), ("file_id", TEXT), ("source_run", "i4"),
                    ("shard", TEXT)])
"""A merged file's /sources: for each of its runs, the file it was first written in, that
file's id and run number there, and the shard it held ("" for all the experiments)."""
APPEND_TABLES = {"runs": RUNS, "milestones": MILESTONES, "values": VALUES, "tasks": TASKS,
                 "logs": LOGS, "attempts": ATTEMPTS}

EXPERIMENT_HEAD = [("id", "S16"), ("index", "i8")]
EXPERIMENT_TAIL = [("status", "S8"), ("attempts", "i4"), ("rank", "i4"), ("host", "S64"),
                   ("start", "f8"), ("end", "f8"), ("error", TEXT)]
EXPERIMENT_COLUMNS = tuple(name for name, _ in EXPERIMENT_HEAD + EXPERIMENT_TAIL)
"""The experiments table's own columns: no keyfield or output may take one of these names."""


def experiment_dtype(keyfields: dict[str, str], outputs: list[str]) -> np.dtype:
    """The experiments table: id, index, the keyfields, status..error, the outputs."""
    return np.dtype(EXPERIMENT_HEAD + list(keyfields.items()) + EXPERIMENT_TAIL
                    + [(name, "f8") for name in outputs])


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
