"""`distx timeline ... --trace FILE.json`: a run's events as a Chrome/Perfetto trace.

Trace Event Format (JSON, open it in ui.perfetto.dev or chrome://tracing): one process per
rank ("pid" = rank, named with its role), thread 0 its sequence (data distribution and
tasks as "X" complete events, milestones as "i" instant events) and thread 1 its sweep
attempts ("X" events, one per attempt). Times are microseconds since the first milestone.
Events are written one by one and attempts read in slices, so 100,000s of attempts never
become one big Python list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import h5py

from distx.results.reader import error_rows, read_results
from distx.results.timeline import RunEvents, distribution_spans, read_run, text

SEQUENCE, SWEEP = 0, 1
SLICE = 65536


def write_trace(path: str | Path, destination: str | Path, run: int | None = None) -> int:
    """Write the trace of `run` (default: the latest) to `destination`; return the number
    of events written."""
    def write(file: h5py.File) -> int:
        events = read_run(file, run, attempts=False)
        with Path(destination).open("w", encoding="utf-8") as out:
            return _write(out, _events(file, events))
    return read_results(path, write)


def _write(out: IO[str], events: Iterator[dict]) -> int:
    out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
    count = 0
    for event in events:
        out.write((",\n" if count else "") + json.dumps(event, separators=(",", ":")))
        count += 1
    out.write("\n]}\n")
    return count


def _micro(seconds: float, events: RunEvents) -> float:
    return round((seconds - events.origin) * 1e6, 1)


def _events(file: h5py.File, events: RunEvents) -> Iterator[dict]:
    for rank, role in events.roles.items():
        yield {"ph": "M", "name": "process_name", "pid": rank,
               "args": {"name": f"rank {rank} ({role})"}}
        yield {"ph": "M", "name": "process_sort_index", "pid": rank, "args": {"sort_index": rank}}
        yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": SEQUENCE,
               "args": {"name": "sequence"}}
    for rank, (start, end) in distribution_spans(events).items():
        yield {"ph": "X", "name": "data distribution", "cat": "data", "pid": rank,
               "tid": SEQUENCE, "ts": _micro(start, events), "dur": round((end - start) * 1e6, 1)}
    for row in events.tasks:
        yield {"ph": "X", "name": text(row["task"]), "cat": "task", "pid": int(row["rank"]),
               "tid": SEQUENCE, "ts": _micro(row["start"], events),
               "dur": round(float(row["end"] - row["start"]) * 1e6, 1),
               "args": {"index": int(row["index"]), "status": text(row["status"]),
                        **({"error": text(row["error"])} if text(row["error"]) else {})}}
    for row in events.milestones:
        yield {"ph": "i", "s": "t", "name": text(row["name"]), "cat": "milestone",
               "pid": int(row["rank"]), "tid": SEQUENCE, "ts": _micro(row["time"], events),
               **({"args": {"detail": text(row["detail"])}} if text(row["detail"]) else {})}
    yield from _attempts(file, events)


def _attempts(file: h5py.File, events: RunEvents) -> Iterator[dict]:
    if "attempts" not in file:
        return
    table = file["attempts"]
    errors = {(int(row["run"]), row["id"], int(row["part"]), int(row["attempt"])): row["error"]
              for row in error_rows(file)}
    named: set[int] = set()
    for first in range(0, table.shape[0], SLICE):
        rows = table[first:first + SLICE]
        for row in rows[rows["run"] == events.run]:
            rank = int(row["rank"])
            if rank not in named:
                named.add(rank)
                yield {"ph": "M", "name": "thread_name", "pid": rank, "tid": SWEEP,
                       "args": {"name": "sweep attempts"}}
            status = text(row["status"])
            yield {"ph": "X", "name": f"experiment {text(row['id'])}", "cat": "attempt " + status,
                   "pid": rank, "tid": SWEEP, "ts": _micro(row["start"], events),
                   "dur": round(float(row["end"] - row["start"]) * 1e6, 1),
                   "args": {"id": text(row["id"]), "part": int(row["part"]),
                            "attempt": int(row["attempt"]), "status": status,
                            **_error(errors.get((events.run, row["id"], int(row["part"]),
                                                 int(row["attempt"]))))}}


def _error(cause: bytes | str | None) -> dict[str, str]:
    return {"error": text(cause)} if cause else {}
