"""`distx show results.h5`: a readable summary of a results file."""

from __future__ import annotations

import datetime
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from distx.results.experiments import status_counts
from distx.results.reader import read_results


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _when(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def summary(path: str | Path) -> str:
    return read_results(path, lambda file: "\n".join([
        *_header(path, file), *_milestones(file), *_tasks(file), *_values(file),
        *_experiments(file), *_files(file)]))


def _header(path: str | Path, file: h5py.File) -> list[str]:
    attrs = file.attrs
    started, ended = float(attrs["started"]), float(attrs["ended"])
    duration = f"{ended - started:.2f} s" if np.isfinite(ended) else (
        "no end recorded: still running, or a rank died or the job was killed "
        "(--resume continues it)")
    hosts = sorted({_text(h) for h in file["provenance/hosts"][()]})
    return [
        f"{path}: run {_text(attrs['run_id'])} of '{_text(attrs['name'])}'",
        f"  state {_text(attrs['state'])}, exit code {int(attrs['exit_code'])}, "
        f"started {_when(started)}, {duration}",
        f"  {int(attrs['world_size'])} rank(s) on {', '.join(hosts)}; distx "
        f"{_text(attrs['distx_version'])}, {_text(attrs['mpi_library'])}",
        f"  script {_text(file['script'].attrs['path'])} (sha256 "
        f"{_text(attrs['script_sha256'])[:12]}...)",
    ]


def _milestones(file: h5py.File) -> list[str]:
    reached: dict[tuple[int, str], list[str]] = defaultdict(list)
    for row in file["milestones"][()]:
        reached[(int(row["rank"]), _text(row["role"]))].append(_text(row["name"]))
    lines = ["milestones:"]
    lines += [f"  rank {rank} ({role}): {' '.join(names)}"
              for (rank, role), names in sorted(reached.items())]
    return lines


def _tasks(file: h5py.File) -> list[str]:
    rows = file["tasks"][()]
    failed = rows[rows["status"] != b"done"]
    lines = [f"tasks: {len(rows)} run, {len(failed)} not done"]
    for row in failed:
        error = _text(row["error"]).splitlines()
        lines.append(f"  rank {row['rank']} ({_text(row['role'])}) task {row['index']} "
                     f"{_text(row['task'])}: {_text(row['status'])}"
                     + (f": {error[0]}" if error else ""))
    return lines


def _values(file: h5py.File) -> list[str]:
    rows = file["values"][()]
    lines = [f"values: {len(rows)} published"]
    for row in rows[:40]:
        lines.append(f"  rank {row['rank']} ({_text(row['role'])}) {_text(row['key'])} = "
                     f"{_text(row['value'])[:70]}")
    if len(rows) > 40:
        lines.append(f"  ... {len(rows) - 40} more")
    return lines


def _experiments(file: h5py.File) -> list[str]:
    if "experiments" not in file:
        return []
    rows = file["experiments"][()]
    lines = ["experiments: " + ", ".join(f"{count} {status}"
                                         for status, count in status_counts(rows).items())
             + f" of {len(rows)}"]
    for row in rows[rows["status"] == b"error"][:5]:
        error = _text(row["error"]).splitlines()
        lines.append(f"  error {_text(row['id'])}: {error[0] if error else ''}")
    return lines


def _files(file: h5py.File) -> list[str]:
    if "files" not in file:
        return []
    names: list[str] = []
    file["files"].visititems(lambda name, item: names.append(f"  {name} ({item.size} bytes)")
                             if isinstance(item, h5py.Dataset) else None)
    return ["files:", *names]


def status(path: str | Path) -> str:
    """Live counts of a results file, also while a run is writing it."""
    return read_results(path, lambda file: _status(path, file))


def _status(path: str | Path, file: h5py.File) -> str:
    attrs = file.attrs
    lines = [f"{path}: '{_text(attrs['name'])}' run {_text(attrs['run_id'])}: "
             f"{_text(attrs['state'])}"]
    if "experiments" in file:
        rows = file["experiments"][()]
        counts = status_counts(rows)
        lines.append("experiments: " + ", ".join(
            f"{counts.get(status, 0)} {status}" for status in
            ("done", "running", "created", "error")) + f" of {len(rows)}")
    run = int(file["runs"][()]["run"][-1]) if file["runs"].shape[0] else 0
    latest: dict[int, str] = {}
    for row in sorted(file["milestones"][()], key=lambda row: row["time"]):
        if row["run"] == run:
            latest[int(row["rank"])] = _text(row["name"])
    if latest:
        lines.append("ranks: " + ", ".join(f"{rank} {name}"
                                           for rank, name in sorted(latest.items())))
    return "\n".join(lines)
