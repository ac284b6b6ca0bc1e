"""`distx merge a.h5 b.h5 ... -o all.h5`: results files of one script combined into one.

The files of an array job's shards (or of any runs of the same script) become one file
that reads, shows and resumes like the file of a single run:

- Experiments are merged by their stable id. Per id the row with the most progress wins
  (done over error over running over created); among equals, the file given first. Two
  `done` rows that differ (the experiment ran twice) are a conflict: the first file's row
  is kept, the other is stored in /conflicts with the file it came from, and reported.
- Every run of every source becomes a run of the merged file, renumbered in the order the
  files are given; /sources says for each run which file (path, file id, shard) and run
  number there it came from. Every row of /attempts, /milestones, /values, /tasks, /logs,
  and every published array and kept file, keeps its run, so each row says its source.
- A run is identified by the file it was first written in and its number there (merged
  files pass that on), so merging the merged file with one of its sources again adds
  nothing: merging is idempotent.

Sources are read through the store's reader (a killed run's journal is replayed in memory;
inputs are never written). The output is built like a checkpoint, under a temporary name
renamed into place, under the output's claim: a killed merge leaves no half file.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distx.errors import UserError
from distx.results import admin, checkpoint, journal
from distx.results.arrays import pack
from distx.results.claim import Claim
from distx.results.journal import Record
from distx.results.layout import (
    APPEND_TABLES,
    FINGERPRINTS,
    RUNS,
    SOURCES,
    TEXT,
    experiment_dtype,
    file_shard,
    stored_text,
)
from distx.results.reader import error_rows, experiment_arrays, read_results
from distx.results.upgrade import converted
from distx.script.grid import column_type, from_cell
from distx.vocabulary import RunState, Status

RUN_TABLES = ("milestones", "values", "tasks", "logs", "attempts", "errors")
"""Tables whose rows belong to a run (besides /runs itself)."""
RUN_GROUPS = ("value_arrays", "files")
"""Groups whose datasets live under run<n>/ of the run that wrote them."""
PROGRESS = {status.encoded: rank for rank, status in
            enumerate((Status.CREATED, Status.RUNNING, Status.ERROR, Status.DONE))}
STATE_ORDER = (RunState.ERRORED.value, RunState.RUNNING.value, RunState.CANCELLED.value)
RUN_PATH = re.compile(r"^/?(value_arrays|files)/run(\d+)/")


@dataclass
class Source:
    """Everything one input file holds, read into memory."""

    path: Path
    attrs: dict[str, Any]
    script: tuple[str, dict] | None
    hosts: np.ndarray | None
    runs: np.ndarray
    origins: list[tuple[str, str, int, str]]   # per run: (file, file id, run, shard)
    tables: dict[str, np.ndarray]
    experiments: np.ndarray | None
    keyfields: list[str]
    outputs: list[str]
    conflicts: np.ndarray | None
    arrays: dict[str, list[np.ndarray | None]]   # array outputs per experiments row
    datasets: dict[str, tuple[np.ndarray, dict]] = field(default_factory=dict)


@dataclass
class MergeReport:
    """What `distx merge` says it did."""

    experiments: int = 0
    done: int = 0
    runs: int = 0
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, file whose row was kept, file of the other done row)"""


def merge(inputs: list[str | Path], output: str | Path, *, force: bool = False,
          overwrite: bool = False) -> MergeReport:
    """Merge `inputs` into a new file at `output` (refused: UserError, nothing written)."""
    paths = [Path(name) for name in inputs]
    target = Path(output)
    _check_paths(paths, target, overwrite)
    sources = [read_results(path, lambda file, path=path: _read(file, path)) for path in paths]
    _check_same_script(sources, force)
    claim = Claim(target, "merge", "merge")
    try:
        records, report = _merged_records(sources)
        journal.journal_path(target).unlink(missing_ok=True)   # of an earlier file here
        for leftover in checkpoint.leftovers(target):          # of a killed merge
            leftover.unlink(missing_ok=True)
        checkpoint.replace(target, records, 0, secrets.token_hex(8), fresh=True)
    finally:
        claim.release()
    return report


# ----- checks --------------------------------------------------------------------------------
def _check_paths(paths: list[Path], target: Path, overwrite: bool) -> None:
    if not paths:
        raise UserError("distx merge needs at least one results file",
                        fix="give the files to merge, e.g. distx merge a.h5 b.h5 -o all.h5")
    for path in paths:
        if path.resolve() == target.resolve():
            raise UserError("the output is also an input: merge never changes its inputs",
                            file=str(target), fix="write the merged file to a new -o path")
    admin.check_output_path(target)
    if target.exists():
        if not overwrite:
            raise UserError("the output file already exists", file=str(target),
                            fix="give a new -o path, or pass --overwrite to replace it")
        admin.check_replaceable(target)


def _check_same_script(sources: list[Source], force: bool) -> None:
    """Every file must hold results of the first file's script, kernels and data."""
    first = sources[0]
    for source in sources[1:]:
        changed = [key for key in FINGERPRINTS if source.attrs.get(f"fingerprint_{key}")
                   != first.attrs.get(f"fingerprint_{key}")]
        if not changed or force:
            continue
        name, expected = _text(source.attrs.get("name")), _text(first.attrs.get("name"))
        what = (f"it holds the results of script '{name}', not of '{expected}'"
                if name != expected else
                "its " + " and ".join({"script": "script (other than its grid)",
                                       "kernels": "kernels", "data": "data"}[key]
                                      for key in changed) + " differ from those of "
                + str(first.path))
        raise UserError(f"cannot merge: {what}", file=str(source.path),
                        fix="merge only files of one script (--force merges anyway)")


# ----- reading -------------------------------------------------------------------------------
def _read(file: h5py.File, path: Path) -> Source:
    attrs = {key: from_cell(value) for key, value in file.attrs.items()}
    runs = file["runs"][()] if "runs" in file else np.zeros(0, dtype=RUNS)
    experiments = file.get("experiments")
    source = Source(
        path=path, attrs=attrs,
        script=(_text(file["script"][()]), dict(file["script"].attrs)) if "script" in file
        else None,
        hosts=file["provenance/hosts"][()] if "provenance/hosts" in file else None,
        runs=runs, origins=_origins(file, path, runs),
        tables={**{name: file[name][()] for name in RUN_TABLES if name in file},
                "errors": error_rows(file)},   # files before version 3: from old columns
        experiments=None if experiments is None else experiments[()],
        keyfields=[] if experiments is None else _names(experiments.attrs.get("keyfields")),
        outputs=[] if experiments is None else _names(experiments.attrs.get("outputs")),
        conflicts=file["conflicts"][()] if "conflicts" in file else None,
        arrays=experiment_arrays(file))
    for group in RUN_GROUPS:
        if group in file:
            file[group].visititems(lambda name, item, group=group: source.datasets.update(
                {f"{group}/{name}": (item[()], dict(item.attrs))})
                if isinstance(item, h5py.Dataset) else None)
    return source


def _origins(file: h5py.File, path: Path, runs: np.ndarray) -> list[tuple[str, str, int, str]]:
    """Where each run of the file was first written: this file, or (for a merged file)
    the source its /sources row names."""
    shard = file_shard(file)
    file_id = _text(file.attrs.get("file_id", "")) or str(path.resolve())   # a version-1 file
    origins = [(str(path), file_id, int(run), "" if shard is None else str(shard))
               for run in runs["run"]]
    if "sources" in file:
        for row in file["sources"][()]:
            origins[int(row["run"])] = (_text(row["file"]), _text(row["file_id"]),
                                        int(row["source_run"]), _text(row["shard"]))
    return origins


# ----- merging -------------------------------------------------------------------------------
def _kept_runs(sources: list[Source]) -> tuple[list[np.void], list[tuple], list[dict]]:
    """The runs of the merged file (each run once, however many files hold it), where
    each came from, and per source the number each of its kept runs gets."""
    seen: set[tuple[str, int]] = set()       # (file id, run) where a run was first written
    runs, origins, new_run = [], [], []
    for source in sources:
        mapping = {}
        for row, origin in zip(source.runs, source.origins):
            if (origin[1], origin[2]) in seen:
                continue
            seen.add((origin[1], origin[2]))
            mapping[int(row["run"])] = len(runs)
            runs.append(row)
            origins.append(origin)
        new_run.append(mapping)
    return runs, origins, new_run


def _merged_records(sources: list[Source]) -> tuple[list[Record], MergeReport]:
    """The records that build the merged file."""
    runs, origins, new_run = _kept_runs(sources)
    records = [Record("attrs", {"attrs": _root_attributes(sources)})]
    first = sources[0]
    if first.script is not None:
        records.append(Record("dataset", {"name": "script", "text": first.script[0],
                                          "attrs": first.script[1]}))
    if first.hosts is not None:
        records.append(Record("dataset", {"name": "provenance/hosts"},
                              {"data": first.hosts}))
    if runs:
        table = converted(np.array(runs), RUNS)
        table["run"] = np.arange(len(runs))
        records.append(Record("append", {"table": "runs"}, {"rows": table}))
    records.append(Record("dataset", {"name": "sources"}, {"data": _sources_table(origins)}))
    for name in RUN_TABLES:
        rows = [converted(_moved_rows(source.tables[name], mapping, name), APPEND_TABLES[name])
                for source, mapping in zip(sources, new_run) if name in source.tables]
        rows = [block for block in rows if len(block)]
        if rows:
            records.append(Record("append", {"table": name}, {"rows": np.concatenate(rows)}))
    for source, mapping in zip(sources, new_run):
        records += _moved_datasets(source, mapping)
    table_records, report = _experiment_records(sources)
    report.runs = len(runs)
    return records + table_records, report


def _moved_rows(rows: np.ndarray, mapping: dict[int, int], table: str) -> np.ndarray:
    """The rows of runs kept from this source, renumbered (array values re-pointed)."""
    rows = rows[np.isin(rows["run"], list(mapping))].copy()
    rows["run"] = [mapping[int(run)] for run in rows["run"]]
    if table == "values":
        for position in np.flatnonzero(rows["kind"].astype(str) == "array"):
            rows["value"][position] = _moved_path(_text(rows["value"][position]), mapping)
    return rows


def _moved_path(name: str, mapping: dict[int, int]) -> str:
    match = RUN_PATH.match(name)
    if match is None:
        return name
    return f"{name[:match.start(2)]}{mapping[int(match.group(2))]}{name[match.end(2):]}"


def _moved_datasets(source: Source, mapping: dict[int, int]) -> list[Record]:
    """Published arrays and kept files of the runs kept from this source."""
    records = []
    for name, (data, attrs) in source.datasets.items():
        match = RUN_PATH.match(name)
        if match is None or int(match.group(2)) not in mapping:
            continue
        records.append(Record("dataset", {"name": _moved_path(name, mapping),
                                          "attrs": attrs}, {"data": data}))
    return records


def _sources_table(origins: list[tuple[str, str, int, str]]) -> np.ndarray:
    table = np.zeros(len(origins), dtype=SOURCES)
    for run, (path, file_id, source_run, shard) in enumerate(origins):
        table[run] = (run, stored_text(path), file_id, source_run, shard)
    return table


def _root_attributes(sources: list[Source]) -> dict[str, Any]:
    """The first file's attributes, with the state, times and size of all the runs."""
    attrs = {key: value for key, value in sources[0].attrs.items()
             if key not in ("shard_index", "shard_count", "file_id", "journal_seq")}
    states = [_text(source.attrs.get("state")) for source in sources]
    worst = next((state for state in STATE_ORDER if state in states), RunState.FINISHED.value)
    ended = [float(source.attrs.get("ended", np.nan)) for source in sources]
    attrs.update({
        "run_id": "merge-" + time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3),
        "state": worst,
        "exit_code": int(sources[states.index(worst)].attrs.get("exit_code", 0))
        if worst in states else 0,
        "started": min(float(source.attrs.get("started", np.nan)) for source in sources),
        "ended": np.nan if np.isnan(ended).any() else max(ended),
        "world_size": max(int(source.attrs.get("world_size", 0)) for source in sources),
        "merged_from": stored_text(" ".join(str(source.path) for source in sources))})
    return attrs


def _experiment_records(sources: list[Source]) -> tuple[list[Record], MergeReport]:
    """The merged experiments table, its array outputs and its conflicts."""
    tables = [source for source in sources if source.experiments is not None]
    report = MergeReport()
    if not tables:
        return [], report
    keyfields = _ordered_union(source.keyfields for source in tables)
    outputs = _ordered_union(source.outputs for source in tables)
    dtype = _table_dtype(tables, keyfields, outputs)
    winner, losers = _choose_rows(tables, report)
    rows = _rows(tables, list(winner.values()), dtype, outputs)
    rows["index"] = np.arange(len(rows))
    report.experiments = len(rows)
    report.done = int((rows["status"] == Status.DONE.encoded).sum())
    records = [Record("experiments", {"keyfields": keyfields, "outputs": outputs},
                      {"rows": rows}), *_array_records(tables, list(winner.values()))]
    conflicts = _conflicts(tables, losers, dtype, outputs)
    if conflicts is not None:
        records.append(Record("dataset", {"name": "conflicts"}, {"data": conflicts}))
    return records, report


def _array_records(tables: list[Source], chosen: list[tuple[int, int]]) -> list[Record]:
    """The array outputs of the merged rows (row i: the source row `chosen[i]`)."""
    records = []
    for output in _ordered_union(source.arrays for source in tables):
        found = [(row, tables[number].arrays[output][position])
                 for row, (number, position) in enumerate(chosen)
                 if output in tables[number].arrays]
        found = [(row, array) for row, array in found if array is not None]
        if found:
            block = pack([array for _, array in found])
            records.append(checkpoint.arrays_record(
                output, np.array([row for row, _ in found], dtype=np.int64), block))
    return records


def _choose_rows(tables: list[Source], report: MergeReport) -> tuple[dict, list]:
    """Per id the row that wins ({id: (table, position)}), and the done rows that lost to
    another done row of the same id (each reported as a conflict)."""
    winner: dict[str, tuple[int, int]] = {}
    losers: list[tuple[int, int]] = []
    for number, source in enumerate(tables):
        for position, row in enumerate(source.experiments):
            experiment_id = row["id"].decode()
            kept = winner.get(experiment_id)
            if kept is None:
                winner[experiment_id] = (number, position)
                continue
            kept_row = tables[kept[0]].experiments[kept[1]]
            if PROGRESS[row["status"]] > PROGRESS[kept_row["status"]]:
                winner[experiment_id] = (number, position)
            elif row["status"] == Status.DONE.encoded == kept_row["status"] and \
                    not _same_result(row, kept_row):
                losers.append((number, position))
                report.conflicts.append((experiment_id, str(tables[kept[0]].path),
                                         str(source.path)))
    return winner, losers


def _same_result(row: np.void, other: np.void) -> bool:
    """The same execution of an experiment (met again through a merged file)."""
    return all(_cells_equal(row[name], other[name]) for name in row.dtype.names
               if name != "index" and name in other.dtype.names)


def _cells_equal(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float) and np.isnan(left) \
            and np.isnan(right):
        return True
    return bool(left == right)


def _ordered_union(lists: Any) -> list[str]:
    union: list[str] = []
    for names in lists:
        union += [name for name in names if name not in union]
    return union


def _table_dtype(tables: list[Source], keyfields: list[str], outputs: list[str]) -> np.dtype:
    """Keyfield columns wide enough for the values of every file."""
    types = {}
    for name in keyfields:
        values = [from_cell(value) for source in tables
                  if name in source.experiments.dtype.names
                  for value in np.unique(source.experiments[name])]
        types[name] = column_type(values)
    return experiment_dtype(types, outputs)


def _rows(tables: list[Source], chosen: list[tuple[int, int]], dtype: np.dtype,
          outputs: list[str]) -> np.ndarray:
    """The rows at (source, position) `chosen`, in that order, as `dtype`."""
    rows = np.zeros(len(chosen), dtype=dtype)
    for name in outputs:
        rows[name] = np.nan          # an output a file has no column for
    pairs = np.array(chosen, dtype=np.int64).reshape(-1, 2)
    for number, source in enumerate(tables):
        targets = np.flatnonzero(pairs[:, 0] == number)
        positions = pairs[targets, 1]
        for name in dtype.names:
            if name in source.experiments.dtype.names:
                rows[name][targets] = source.experiments[name][positions]
    return rows


def _conflicts(tables: list[Source], losers: list[tuple[int, int]], dtype: np.dtype,
               outputs: list[str]) -> np.ndarray | None:
    """Earlier conflicts of merged files, then the done rows that lost here."""
    with_file = np.dtype([*[(name, dtype[name]) for name in dtype.names], ("file", TEXT)])
    blocks = [converted(source.conflicts, with_file) for source in tables
              if source.conflicts is not None]
    lost = _rows(tables, losers, dtype, outputs)
    block = np.zeros(len(lost), dtype=with_file)
    for name in dtype.names:
        block[name] = lost[name]
    block["file"] = [stored_text(tables[number].path) for number, _ in losers]
    blocks.append(block)
    everything = np.concatenate(blocks)
    unique = [row for position, row in enumerate(everything)
              if not any(_same_result(row, earlier) for earlier in everything[:position])]
    return np.array(unique, dtype=with_file) if unique else None


def _names(value: Any) -> list[str]:
    return [] if value is None else [_text(name) for name in np.atleast_1d(value)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)
