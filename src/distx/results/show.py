"""`distx show` and `distx status`: what a results file (or several shards) holds, for a person.

`show` answers "what did I get?": per run its state, milestones (ranks that reached the
same ones collapsed into one line), failed tasks with their whole error, values; then the
experiments: statistics of every output column (optionally grouped by up to two
keyfields), the best rows by a column, and errors grouped by message with the keyfields
of the experiments they hit. `status` answers "how far is it?", also while a run writes.
Both take several files (shards of one sweep) and report their union.
"""

from __future__ import annotations

import datetime
import glob
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from distx.errors import UserError
from distx.results.experiments import status_counts
from distx.results.reader import error_texts, read_results
from distx.vocabulary import TERMINAL, RunState, Status

MAX_GROUPS = 2
SHOWN_VALUES = 40
SHOWN_ERROR_KEYS = 8


@dataclass
class ShowOptions:
    """What `distx show` adds to the summary."""

    by: list[str] = field(default_factory=list)   # group the output statistics by these
    sort: str | None = None                       # list the best rows by this column
    descending: bool = False
    top: int = 10


@dataclass
class Snapshot:
    """The tables `show` and `status` read from one results file."""

    path: str
    attrs: dict
    hosts: list[str]
    script_path: str
    runs: np.ndarray
    milestones: np.ndarray
    tasks: np.ndarray
    values: np.ndarray
    attempts: np.ndarray | None    # columns run and rank, read only while a run writes
    experiments: np.ndarray | None
    errors: dict[bytes, str]       # the error text of each experiment in error, by id
    keyfields: list[str]
    outputs: list[str]
    files: list[tuple[str, int]]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _when(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def expand_paths(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """The files named, a pattern such as 'shard-*.h5' (quoted, so the shell left it)
    standing for the files it matches."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    paths: list[Path] = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else []
        if glob.has_magic(pattern) and not matches and not Path(pattern).exists():
            raise UserError(f"no file matches {pattern}", fix="give results files or a "
                            "pattern that matches some")
        paths += [Path(match) for match in matches] or [Path(pattern)]
    return list(dict.fromkeys(paths))


def read_snapshot(path: str | Path) -> Snapshot:
    return read_results(path, lambda file: _snapshot(str(path), file))


def _snapshot(path: str, file: h5py.File) -> Snapshot:
    experiments = file.get("experiments")
    files: list[tuple[str, int]] = []
    if "files" in file:
        file["files"].visititems(lambda name, item: files.append((name, item.size))
                                 if isinstance(item, h5py.Dataset) else None)
    return Snapshot(
        path=path, attrs=dict(file.attrs),
        hosts=sorted({_text(host) for host in file["provenance/hosts"][()]}),
        script_path=_text(file["script"].attrs["path"]),
        runs=file["runs"][()], milestones=file["milestones"][()], tasks=file["tasks"][()],
        values=file["values"][()],
        attempts=file["attempts"].fields(["run", "rank"])[()]
        if "attempts" in file and _text(file.attrs["state"]) == RunState.RUNNING.value
        else None,
        experiments=experiments[()] if experiments is not None else None,
        errors=error_texts(file) if experiments is not None else {},
        keyfields=[_text(name) for name in experiments.attrs.get("keyfields", [])]
        if experiments is not None else [],
        outputs=[_text(name) for name in experiments.attrs.get("outputs", [])]
        if experiments is not None else [],
        files=files)


# ======== show ===============================================================================
def summary(paths: str | Path | Iterable[str | Path],
            options: ShowOptions | None = None) -> str:
    options = options or ShowOptions()
    snapshots = [read_snapshot(path) for path in expand_paths(paths)]
    lines: list[str] = []
    for snapshot in snapshots:
        lines += _file_section(snapshot)
    table = _union(snapshots)
    if table is not None:
        lines += _experiments(table, options, len(snapshots))
    return "\n".join(lines)


def _file_section(snapshot: Snapshot) -> list[str]:
    attrs = snapshot.attrs
    lines = [
        f"{snapshot.path}: '{_text(attrs['name'])}', {len(snapshot.runs)} run(s); latest "
        f"{_text(attrs['run_id'])}",
        f"  {int(attrs['world_size'])} rank(s) on {', '.join(snapshot.hosts)}; distx "
        f"{_text(attrs['distx_version'])}, {_text(attrs['mpi_library'])}"
        + (", fault-tolerant" if _text(attrs.get("fault_tolerant", "no")) == "yes" else ""),
        f"  script {snapshot.script_path} (sha256 {_text(attrs['script_sha256'])[:12]}...)",
    ]
    for run in snapshot.runs:
        lines += _run_section(snapshot, run)
    if snapshot.files:
        lines.append("files:")
        lines += [f"  {name} ({size} bytes)" for name, size in snapshot.files]
    return lines


def _run_section(snapshot: Snapshot, run: np.void) -> list[str]:
    number = int(run["run"])
    started, ended = float(run["started"]), float(run["ended"])
    duration = f"{ended - started:.2f} s" if np.isfinite(ended) else (
        "no end recorded: still running, or a rank died or the job was killed "
        "(--resume continues it)")
    lines = [f"run {number} ({_text(run['run_id'])}): state {_text(run['state'])}, exit code "
             f"{int(run['exit_code'])}, started {_when(started)}, {duration}"]
    milestones = snapshot.milestones[snapshot.milestones["run"] == number]
    lines += _indent(_milestones(milestones))
    lines += _indent(_tasks(snapshot.tasks[snapshot.tasks["run"] == number]))
    lines += _indent(_values(snapshot.values[snapshot.values["run"] == number]))
    return _indent(lines)


def _indent(lines: list[str], by: str = "  ") -> list[str]:
    return [by + line for line in lines]


def _block(text: str, by: str) -> list[str]:
    """A multi-line text (a traceback, a cause) indented under its line."""
    return [by + line for line in text.splitlines()]


def rank_ranges(ranks: Iterable[int]) -> str:
    """1,2,3,5,7,8 -> '1-3,5,7-8'."""
    ordered = sorted(set(ranks))
    parts, start = [], None
    for index, rank in enumerate(ordered):
        start = rank if start is None else start
        if index + 1 == len(ordered) or ordered[index + 1] != rank + 1:
            parts.append(str(rank) if start == rank else f"{start}-{rank}")
            start = None
    return ",".join(parts)


def _ranks_label(ranks: list[int], role: str) -> str:
    word = "rank" if len(ranks) == 1 else "ranks"
    return f"{word} {rank_ranges(ranks)} ({role})"


def _milestones(rows: np.ndarray) -> list[str]:
    """One line per group of ranks that reached the same milestones with the same causes."""
    reached: dict[int, list[np.void]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row["time"]):
        reached[int(row["rank"])].append(row)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for rank, milestones in reached.items():
        key = (_text(milestones[0]["role"]),
               tuple(_text(row["name"]) for row in milestones),
               tuple(_text(row["detail"]) for row in milestones))
        groups[key].append(rank)
    lines = ["milestones:"]
    for (role, names, details), ranks in sorted(groups.items(), key=lambda item: item[1]):
        lines.append(f"  {_ranks_label(ranks, role)}: {' '.join(names)}")
        for name, detail in zip(names, details):
            if detail:
                lines.append(f"    {name}:")
                lines += _block(detail, "      ")
    return lines


def _tasks(rows: np.ndarray) -> list[str]:
    failed = rows[rows["status"] != b"done"] if len(rows) else rows
    lines = [f"tasks: {len(rows)} run, {len(failed)} not done"]
    for row in failed:
        lines.append(f"  rank {row['rank']} ({_text(row['role'])}) task {row['index']} "
                     f"{_text(row['task'])}: {_text(row['status'])}")
        lines += _block(_text(row["error"]), "    ")
    return lines


def _values(rows: np.ndarray) -> list[str]:
    lines = [f"values: {len(rows)} published"]
    for row in rows[:SHOWN_VALUES]:
        lines.append(f"  rank {row['rank']} ({_text(row['role'])}) {_text(row['key'])} = "
                     f"{_text(row['value'])[:70]}")
    if len(rows) > SHOWN_VALUES:
        lines.append(f"  ... {len(rows) - SHOWN_VALUES} more")
    return lines


# ----- the experiments (of every file given) -------------------------------------------------
@dataclass
class _Table:
    columns: dict[str, np.ndarray]
    keyfields: list[str]
    outputs: list[str]

    def __len__(self) -> int:
        return len(self.columns["id"])


def _union(snapshots: list[Snapshot]) -> _Table | None:
    """The experiments of every file, as columns; an experiment in two files counts once."""
    tables = [snapshot for snapshot in snapshots if snapshot.experiments is not None]
    if not tables:
        return None
    common = [name for name in tables[0].experiments.dtype.names
              if all(name in table.experiments.dtype.names for table in tables)]
    columns = {name: np.concatenate([table.experiments[name] for table in tables])
               for name in common}
    _, first = np.unique(columns["id"], return_index=True)
    first.sort()
    columns = {name: column[first] for name, column in columns.items()}
    errors: dict[bytes, str] = {}
    for table in reversed(tables):         # of the first file that has the experiment
        errors.update(table.errors)
    columns["error"] = np.array([errors.get(row_id, "") for row_id in columns["id"].tolist()],
                                dtype=object)
    keyfields = [name for name in tables[0].keyfields if name in columns]
    outputs = [name for name in tables[0].outputs if name in columns]
    return _Table(columns, keyfields, outputs)


def _experiments(table: _Table, options: ShowOptions, files: int) -> list[str]:
    counts = status_counts(table.columns)
    where = f" in {files} files" if files > 1 else ""
    lines = ["experiments" + where + ": " + ", ".join(
        f"{count} {status}" for status, count in counts.items()) + f" of {len(table)}"]
    lines += _indent(_statistics(table, options.by))
    if options.sort:
        lines += _indent(_best(table, options))
    lines += _indent(_errors(table))
    return lines


def _check_columns(table: _Table, names: list[str], what: str) -> None:
    for name in names:
        if name not in table.columns:
            choices = table.keyfields if what == "--by" else list(table.columns)
            raise UserError(f"{what} {name}: no such column", fix="use one of: "
                            + ", ".join(choices))


def _statistics(table: _Table, by: list[str]) -> list[str]:
    """count / mean / std / min / max of every output over done experiments, per group."""
    if not table.outputs:
        return []
    if len(by) > MAX_GROUPS:
        raise UserError(f"--by takes at most {MAX_GROUPS} keyfields, not {len(by)}")
    _check_columns(table, by, "--by")
    done = table.columns["status"] == Status.DONE.encoded
    header = [*by, "output", "count", "mean", "std", "min", "max"]
    rows = []
    keys = list(zip(*(table.columns[name][done] for name in by))) if by else [()] * done.sum()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for position, key in zip(np.flatnonzero(done).tolist(), keys):
        groups[key].append(position)
    for key in sorted(groups):
        chosen = np.array(groups[key], dtype=np.int64)
        for output in table.outputs:
            values = table.columns[output][chosen].astype(float)
            values = values[np.isfinite(values)]
            rows.append([*map(_cell, key), output, str(len(values)),
                         *(_number(function(values)) if len(values) else "-"
                           for function in (np.mean, _std, np.min, np.max))])
    title = "outputs of done experiments" + (f" by {', '.join(by)}" if by else "") + ":"
    return [title, *_indent(_aligned(header, rows))]


def _std(values: np.ndarray) -> float:
    """The sample standard deviation (as pandas' describe), 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _best(table: _Table, options: ShowOptions) -> list[str]:
    _check_columns(table, [options.sort], "--sort")
    column = table.columns[options.sort]
    if column.dtype.kind in "fiub":
        key = column.astype(float)
        key = np.where(np.isnan(key), np.inf, -key if options.descending else key)
        order = np.argsort(key, kind="stable")
    else:
        order = np.argsort(column, kind="stable")
        order = order[::-1] if options.descending else order
    shown = [name for name in (*table.keyfields, *table.outputs, "status")
             if name != options.sort]
    header = [options.sort, *shown]
    rows = [[_cell(table.columns[name][position]) for name in header]
            for position in order[:options.top].tolist()]
    direction = "highest" if options.descending else "lowest"
    return [f"{min(options.top, len(order))} {direction} by {options.sort}:",
            *_indent(_aligned(header, rows))]


def _errors(table: _Table) -> list[str]:
    """Experiments in error grouped by the first line of their error, with their keyfields;
    the whole text of the first of each group below it."""
    failed = np.flatnonzero(table.columns["status"] == Status.ERROR.encoded)
    if not len(failed):
        return []
    groups: dict[str, list[int]] = defaultdict(list)
    for position in failed.tolist():
        text = _text(table.columns["error"][position])
        groups[_headline(text)].append(position)
    lines = [f"errors: {len(failed)} experiment(s), {len(groups)} distinct"]
    for headline, positions in sorted(groups.items(), key=lambda item: -len(item[1])):
        hit = [_keys(table, position) for position in positions[:SHOWN_ERROR_KEYS]]
        more = f" and {len(positions) - SHOWN_ERROR_KEYS} more" \
            if len(positions) > SHOWN_ERROR_KEYS else ""
        lines.append(f"  {headline}  ({len(positions)} experiment(s): "
                     f"{'; '.join(hit)}{more})")
        full = _text(table.columns["error"][positions[0]]).strip()
        rest = full.removeprefix(headline) if full.startswith(headline) else full
        lines += _block(rest.strip("\n"), "      ")
    return lines


def _headline(text: str) -> str:
    """The line that says what went wrong: the last line of a Python traceback (its
    exception), else the first line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    if lines[0].startswith("Traceback"):
        return lines[-1].strip()
    return lines[0].strip()


def _keys(table: _Table, position: int) -> str:
    return " ".join(f"{name}={_cell(table.columns[name][position])}"
                    for name in table.keyfields)


def _cell(value: object) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode(errors="replace")
    if isinstance(value, (float, np.floating)):
        return _number(float(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}"


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return ["  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)).rstrip()
            for line in (header, *rows)]


# ======== status ============================================================================
def status(paths: str | Path | Iterable[str | Path]) -> str:
    """Live counts of results files (also while a run writes them), and their union."""
    snapshots = [read_snapshot(path) for path in expand_paths(paths)]
    lines: list[str] = []
    for snapshot in snapshots:
        lines += _status(snapshot)
    table = _union(snapshots)
    if table is not None:
        counts = status_counts(table.columns)
        where = f" in {len(snapshots)} files" if len(snapshots) > 1 else ""
        lines.append(f"experiments{where}: " + ", ".join(
            f"{counts.get(state.value, 0)} {state.value}" for state in
            (Status.DONE, Status.RUNNING, Status.CREATED, Status.ERROR)) + f" of {len(table)}")
    return "\n".join(lines)


def _status(snapshot: Snapshot) -> list[str]:
    attrs = snapshot.attrs
    state = _text(attrs["state"])
    lines = [f"{snapshot.path}: '{_text(attrs['name'])}' run {_text(attrs['run_id'])}: "
             f"{state}"]
    run = int(snapshot.runs["run"][-1]) if len(snapshot.runs) else 0
    latest: dict[int, str] = {}
    for row in sorted(snapshot.milestones, key=lambda row: row["time"]):
        if row["run"] == run:
            latest[int(row["rank"])] = _text(row["name"])
    if state == RunState.RUNNING.value:
        sweeping = _sweep_ranks(snapshot, run)
        latest = {rank: "serving" if name in TERMINAL and name != RunState.ERRORED.value
                  and rank in sweeping else name for rank, name in latest.items()}
    if latest:
        grouped: dict[str, list[int]] = defaultdict(list)
        for rank, name in latest.items():
            grouped[name].append(rank)
        lines.append("ranks: " + ", ".join(
            f"{rank_ranges(ranks)} {name}"
            for name, ranks in sorted(grouped.items(), key=lambda item: min(item[1]))))
    return lines


def _sweep_ranks(snapshot: Snapshot, run: int) -> set[int]:
    """Ranks that run sweep tasks while the sweep goes on (none once it is over)."""
    experiments = snapshot.experiments
    if experiments is None:
        return set()
    running = experiments["status"] == Status.RUNNING.encoded
    if not running.any():
        return set()
    ranks = set(experiments["rank"][running].tolist())
    if snapshot.attempts is not None:
        ranks |= set(snapshot.attempts["rank"][snapshot.attempts["run"] == run].tolist())
    return ranks
