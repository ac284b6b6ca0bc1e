"""The results store in process: journal, checkpoints, table transitions, claims, odd records.

Fast (no MPI): each test drives the writer, the reader and the administration functions
directly on files in tmp_path, as rank 0 and the `distx` commands do.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from distx.errors import ResultsWriteError, UserError
from distx.results import admin, checkpoint, journal
from distx.results.claim import Claim
from distx.results.experiments import ExperimentTable, experiment_rows
from distx.results.journal import Record
from distx.results.layout import EXPERIMENT_COLUMNS, FORMAT, FORMAT_VERSION, stored_text
from distx.results.reader import error_texts, experiment_arrays, read_results
from distx.results.writer import ResultsFile, RunIdentity
from distx.script.grid import Grid
from distx.vocabulary import Status

DONE, RUNNING, CREATED = Status.DONE.encoded, Status.RUNNING.encoded, Status.CREATED.encoded


def identity(run_id: str = "run-a", name: str = "demo") -> RunIdentity:
    return RunIdentity(name, run_id, "Version: 2\n", "demo.yml", "sha",
                       dict.fromkeys(("script", "kernels", "data"), "f"),
                       {"world_size": 2, "command_line": "distx demo.yml"}, ["h0", "h1"])


def grid(count: int) -> Grid:
    return Grid({"seed": list(range(count))}, folds=1)


def start_sweep(path: Path, count: int = 10, **options) -> tuple[ResultsFile, ExperimentTable]:
    results = ResultsFile.open(path, identity(options.pop("run_id", "run-a")), **options)
    keyfields = grid(count)
    return results, results.experiments(keyfields, keyfields.ids(), ["result"])


def finish(table: ExperimentTable, rows: np.ndarray, rank: int = 1) -> None:
    table.start(rows, rank, "h1", 1.0)
    table.record_done(rows, rank, "h1", np.ones(len(rows), dtype=np.int32),
                      np.full(len(rows), 1.0), np.full(len(rows), 2.0),
                      {"result": rows.astype(float) ** 2})
    table.record_attempts(rows, np.zeros(len(rows), dtype=np.int64),
                          np.ones(len(rows), dtype=np.int32), rank, "h1",
                          np.full(len(rows), 1.0), np.full(len(rows), 2.0),
                          np.ones(len(rows), dtype=bool), {})


def on_disk(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as file:
        return file["experiments"][()]


def current(path: Path) -> np.ndarray:
    return read_results(path, lambda file: file["experiments"][()])


# ----- the journal ---------------------------------------------------------------------------
def test_journal_round_trips_tables_text_and_arrays(tmp_path):
    rows = np.zeros(3, dtype=[("n", "i8"), ("x", "f8"), ("s", "S4"), ("same", "S64"),
                              ("ends", "i4"), ("t", h5py.string_dtype())])
    rows["same"] = b"host"                   # stored once
    rows["ends"] = [7, 8, 7]                 # alike at both ends only: stored whole
    rows["n"], rows["x"], rows["s"] = [1, 2, 3], [0.5, np.inf, -1], [b"a", b"bb", b""]
    rows["t"] = ["", "line\\x00with NUL", "ünïcode"]
    records = [Record("append", {"table": "tasks"}, {"rows": rows}, seq=1),
               Record("dataset", {"name": "a"}, {"data": np.arange(6.0).reshape(2, 3)}, seq=2)]
    path = tmp_path / "j"
    path.write_bytes(b"".join(journal.encode(record, "id") for record in records))
    back = journal.read(path, "id")
    assert [record.seq for record in back] == [1, 2]
    assert back[0].arrays["rows"].tolist() == rows.tolist()
    assert np.array_equal(back[1].arrays["data"], records[1].arrays["data"])
    assert journal.read(path, "another file") == []


def test_a_torn_or_corrupt_tail_ends_the_journal_at_the_last_whole_record(tmp_path):
    frames = [journal.encode(Record("attrs", {"attrs": {"n": i}}, seq=i), "id")
              for i in (1, 2, 3)]
    path = tmp_path / "j"
    for cut in range(1, len(frames[2])):
        path.write_bytes(frames[0] + frames[1] + frames[2][:cut])
        assert [record.seq for record in journal.read(path)] == [1, 2]
    flipped = bytearray(frames[1])
    flipped[-1] ^= 0xFF
    path.write_bytes(frames[0] + bytes(flipped) + frames[2])
    assert [record.seq for record in journal.read(path)] == [1]


def test_a_crafted_journal_cannot_make_numpy_unpickle(tmp_path):
    """Raw columns must not be objects: a pickle payload is refused, never loaded."""
    header = json.dumps({"op": "dataset", "seq": 1, "file_id": "id", "fields": {"name": "x"},
                         "arrays": {"data": {"shape": [1], "descr": None, "columns": {
                             "null": {"descr": "|O", "offset": 0, "nbytes": 8}}}}}).encode()
    payload = struct.pack("<I", len(header)) + header + b"\x80\x04N."  # pickle of None
    frame = struct.pack("<4sII", journal.MAGIC, len(payload), zlib.crc32(payload)) + payload
    (tmp_path / "j").write_bytes(frame)
    assert journal.read(tmp_path / "j") == []


# ----- table transitions -----------------------------------------------------------------------
def test_transitions_change_only_their_rows_and_report_them(tmp_path):
    keyfields = grid(6)
    table = ExperimentTable(experiment_rows(keyfields, keyfields.ids(), ["result"], None), 0)
    assert set(table.status_of(np.arange(6))) == {CREATED}
    rows = np.array([0, 1, 2])
    table.start(rows, 1, "h1", 5.0)
    table.start(np.array([2, 3]), 2, "h2", 6.0)      # 2 is running already: stays on rank 1
    assert table.rows["rank"][:4].tolist() == [1, 1, 1, 2]
    table.record_done(np.array([0, 1]), 1, "h1", np.array([1, 1]), np.array([5.0, 5.0]),
                      np.array([6.0, 6.0]), {"result": np.array([10**400, 4], dtype=object)})
    assert np.isnan(table.rows["result"][0]) and table.rows["result"][1] == 4
    table.record_attempts(np.array([2]), np.array([0]), np.array([3]), 1, "h1",
                          np.array([5.0]), np.array([7.0]), np.zeros(1, dtype=bool),
                          {0: "boom\0\udcff"})
    table.record(2, Status.ERROR, 1, "h1", 3, 5.0, 7.0, {})
    assert table.first_error() == (keyfields.ids()[2], "boom\\x00\\udcff")
    table.back_to_created(np.arange(6))                # only 3 was still running
    assert table.status_of(np.arange(6)).tolist() == [DONE, DONE, b"error", CREATED,
                                                      CREATED, CREATED]
    changes = table.take_changes()
    assert [(record.op, record.fields.get("table")) for record in changes] == [
        ("rows", None), ("append", "attempts"), ("append", "errors")]
    assert changes[0].arrays["positions"].tolist() == [0, 1, 2, 3]
    assert changes[2].arrays["rows"]["error"].tolist() == ["boom\\x00\\udcff"]
    assert table.take_changes() == []
    assert table.reset({"error"}) == {"error": 1}
    assert table.counts() == {"created": 4, "done": 2}
    assert table.take_changes()[0].arrays["positions"].tolist() == [2]


def test_resume_keeps_rows_and_appends_the_new_grid_points():
    first = grid(4)
    rows = experiment_rows(first, first.ids(), ["result"], None)
    rows["status"][:2] = DONE
    bigger = Grid({"seed": [0.5, *range(6)]}, folds=1)     # int column becomes float
    merged = experiment_rows(bigger, bigger.ids(), ["result"], rows)
    assert merged.dtype["seed"] == np.float64
    assert merged["id"][:4].tolist() == rows["id"].tolist()
    assert merged["status"][:4].tolist() == rows["status"].tolist()
    assert sorted(merged["seed"][4:].tolist()) == [0.5, 4.0, 5.0]
    assert merged["index"].tolist() == list(range(7))


def test_resume_of_the_same_or_a_grown_grid_and_a_column_turning_to_text():
    first = grid(4)
    rows = experiment_rows(first, first.ids(), ["result"], None)
    same = experiment_rows(first, first.ids(), ["result"], rows)
    assert same[["id", "seed", "status"]].tolist() == rows[["id", "seed", "status"]].tolist()
    grown = grid(6)                                   # the same order, two more points
    merged = experiment_rows(grown, grown.ids(), ["result"], rows)
    assert merged["id"].tolist() == [i.encode() for i in grown.ids()]
    assert merged["seed"].tolist() == list(range(6)) and merged.dtype["seed"] == np.int64
    texts = Grid({"seed": ["a"]}, folds=1)            # ints stored, text joins: the widest
    widened = experiment_rows(texts, texts.ids(), ["result"], merged)   # cell decides
    assert widened.dtype["seed"].kind == "S" and widened["seed"].tolist() == [
        b"0", b"1", b"2", b"3", b"4", b"5", b"a"]


def test_experiment_columns_name_the_tables_own_columns():
    assert {"id", "index", "status", "attempts", "rank", "host", "start", "end",
            "error"} == set(EXPERIMENT_COLUMNS)


# ----- writer, checkpoints, recovery ----------------------------------------------------------
def test_a_crash_leaves_the_last_checkpoint_and_the_journal_the_rest(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path)
    finish(table, np.arange(3))
    results.flush()                  # durable in the journal, not yet in a checkpoint
    finish(table, np.arange(3, 5))   # arrived, not yet synced: may be run again
    # "killed" here: the object is dropped without close
    assert (on_disk(path)["status"] == CREATED).all()          # the checkpoint
    assert (current(path)["status"][:3] == DONE).all()          # checkpoint + journal
    results.claim.release()          # what the kernel does when the process dies
    assert admin.recover(path) > 0
    rows = on_disk(path)
    assert rows["status"][:3].tolist() == [DONE] * 3 and rows["result"][2] == 4
    assert not journal.journal_path(path).exists()


def test_the_journal_holds_only_the_columns_a_run_changes_and_recovery_keeps_the_rest(
        tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, count=8)
    finish(table, np.array([1, 2, 5]))
    results.flush()
    finish(table, np.array([3, 4]))          # together they cover rows 1-5, not their ids
    results.flush()
    rows_records = [record for record in journal.read(journal.journal_path(path))
                    if record.op == "rows"]
    assert [record.arrays["rows"].dtype.names for record in rows_records] == [
        ("status", "attempts", "rank", "host", "start", "end", "result")] * 2
    expected = table.rows.copy()
    results.claim.release()
    assert admin.recover(path) > 0
    recovered = on_disk(path)
    for name in expected.dtype.names:                        # ids, indices, seeds kept
        np.testing.assert_array_equal(recovered[name], expected[name])


def test_a_checkpoint_replaces_the_file_whole_and_close_removes_journal_and_claim(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path)
    inode = path.stat().st_ino
    finish(table, np.arange(10))
    results.checkpoint()
    assert path.stat().st_ino != inode          # a new file, renamed over the old one
    assert (on_disk(path)["status"] == DONE).all()
    results.close("Finished", 0)
    with h5py.File(path, "r") as file:
        assert file.attrs["state"] == "Finished" and file.attrs["format"] == FORMAT
        assert file.attrs["format_version"] == FORMAT_VERSION
        assert len(file["attempts"]) == 10 and file["runs"][0]["state"] == b"Finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_a_short_journal_write_stops_the_run_rather_than_append_after_a_torn_record(
        tmp_path, monkeypatch):
    """A write that stores only part of its bytes (a disk that fills up): what follows
    would lie after a torn record, where no reader finds it, so the run must stop."""
    path = tmp_path / "out.h5"
    results, table = start_sweep(path)
    finish(table, np.arange(3))
    monkeypatch.setattr(journal.os, "writev", lambda fd, parts: sum(map(len, parts)) - 1)
    with pytest.raises(ResultsWriteError, match="No space left"):
        results.flush()
    results.claim.release()


def test_a_kill_during_a_checkpoint_leaves_the_old_file_and_a_leftover_that_recover_removes(
        tmp_path, monkeypatch):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path)
    finish(table, np.arange(4))
    results.flush()
    before = path.read_bytes()

    def killed(*_):
        raise KeyboardInterrupt  # stands for SIGKILL between the copy and the rename
    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        results.checkpoint()
    monkeypatch.undo()
    assert path.read_bytes() == before
    results.claim.release()
    admin.recover(path)
    assert (on_disk(path)["status"][:4] == DONE).all()
    assert checkpoint.leftovers(path) == []


def test_resume_replays_the_journal_and_rebuilds_the_table_in_one_checkpoint(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, 4)
    finish(table, np.arange(2))
    results.flush()
    results.claim.release()                       # killed
    again = ResultsFile.open(path, identity("run-b"), resume=True)
    bigger = Grid({"seed": [0.5, *range(4)]}, folds=1)
    table = again.experiments(bigger, bigger.ids(), ["result"])
    rows = on_disk(path)
    assert rows.dtype["seed"] == np.float64 and len(rows) == 5
    assert rows["status"].tolist() == [DONE, DONE, CREATED, CREATED, CREATED]
    assert table.counts() == {"done": 2, "created": 3}
    again.close("Finished", 0)
    with h5py.File(path, "r") as file:
        assert file["runs"]["run_id"].tolist() == [b"run-a", b"run-b"]


def test_reset_goes_through_a_checkpoint_and_keeps_attempts(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, 5)
    finish(table, np.arange(5))
    results.close("Finished", 0)
    assert admin.reset_experiments(path, {"done"}) == {"done": 5}
    rows = on_disk(path)
    assert (rows["status"] == CREATED).all()
    with h5py.File(path, "r") as file:
        assert len(file["attempts"]) == 5


# ----- one writer per file ---------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_first_and_a_dead_claim_is_taken_over(tmp_path):
    path = tmp_path / "out.h5"
    results, _ = start_sweep(path)
    for options in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(UserError, match=r"being written by run run-a \(run; host .*pid "
                           rf"{os.getpid()}"):
            ResultsFile.open(path, identity("run-b"), **options)
    with pytest.raises(UserError, match="run-a"):
        admin.reset_experiments(path, {"done"})
    with pytest.raises(UserError, match="run-a"):
        admin.recover(path)
    results.claim.release()                   # the first writer dies: its lock goes
    taken = Claim(path, "run-c", "resume")
    taken.release()


# ----- what may be replaced --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["script", "not hdf5", "other hdf5", "folder", "device"])
def test_overwrite_replaces_only_a_distx_results_file(tmp_path, kind):
    path = tmp_path / "target"
    if kind == "script":
        path.write_text("Version: 2\nName: mine\n")
    elif kind == "not hdf5":
        path.write_bytes(b"\0" * 100)
    elif kind == "other hdf5":
        with h5py.File(path, "w") as file:
            file["x"] = 1
    elif kind == "folder":
        path.mkdir()
    else:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))
    before = None if path.is_dir() or kind == "device" else path.read_bytes()
    with pytest.raises(UserError):
        ResultsFile.open(path, identity(), overwrite=True)
    if before is not None:
        assert path.read_bytes() == before
    assert not Path(str(path) + ".lock").exists()


def test_an_output_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        ResultsFile.open(tmp_path / "file" / "sub" / "out.h5", identity())


# ----- any record from any rank ----------------------------------------------------------------
ODD_TEXT = ["a\0b", "", ".", "/", "\udcff\udcfe not UTF-8", "x" * 10_000]


def test_odd_records_from_any_rank_are_all_stored(tmp_path):
    path = tmp_path / "out.h5"
    results = ResultsFile.open(path, identity())
    for key in ("", ".", "/", "a/b", "..", "\0"):
        results.record_value(1, {"key": key, "role": "r\0", "time": 1.0,
                                 "value": np.arange(3)})
    for value in (10**400, "t\0ext", b"\xff\xfe", {"k": [1, None]}, np.int64(3), float("nan")):
        results.record_value(2, {"key": "odd", "role": "r", "time": 1.0, "value": value})
    results.record_value(2, {"key": "u", "role": "r", "time": 1.0,
                             "value": np.array(["é", "\0"])})
    for text in ODD_TEXT:
        results.record_task(1, {"role": text, "index": 0, "task": text, "status": "error",
                                "start": 0.0, "end": 1.0, "error": text,
                                "log": [(1.0, "INFO", text)]})
        results.record_milestone(1, text, text, 1.0, text)
    results.record_file(1, {"name": "..", "role": "r", "index": 0, "source": "\0",
                            "data": b"\0\xff"})
    keyfields = grid(2)
    table = results.experiments(keyfields, keyfields.ids(), ["result"])
    table.record(0, Status.ERROR, 1, "h\0", 1, 0.0, 1.0, {"result": 10**400})
    table.record_attempts(np.array([0]), np.array([0]), np.array([1]), 1, "h", np.zeros(1),
                          np.ones(1), np.zeros(1, dtype=bool), {0: "\0\udcff"})
    results.close("Finished", 0)
    with h5py.File(path, "r") as file:
        values = file["values"][()]
        assert len(values) == 13
        for row in values[:6]:
            assert np.array_equal(file[row["value"].decode()][()], np.arange(3))
        assert json.loads(values[6]["value"]) == 10**400
        assert len(file["tasks"]) == len(ODD_TEXT) and len(file["logs"]) == len(ODD_TEXT)
        assert file["tasks"][0]["error"] == b"a\\x00b"
        assert file["errors"][0]["error"] == b"\\x00\\udcff"   # the experiment's error
        assert len(file["files/run0/rank1"]) == 1


def test_stored_text_keeps_plain_text_and_escapes_what_hdf5_refuses():
    assert stored_text("plain") == "plain"
    assert stored_text("a\0b") == "a\\x00b"
    assert stored_text("\udcff") == "\\udcff"
    assert stored_text(b"\xff") == "\\xff"


def test_a_kill_during_close_loses_nothing_the_journal_holds_the_end(tmp_path, monkeypatch):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, 6)
    finish(table, np.arange(6))

    def killed(*_):
        raise KeyboardInterrupt  # stands for SIGKILL while close renames its checkpoint
    monkeypatch.setattr(checkpoint.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        results.close("Finished", 0)
    monkeypatch.undo()
    with h5py.File(path, "r") as file:           # the previous checkpoint, whole
        assert file.attrs["state"] == "Running"
    results.claim.release()
    admin.recover(path)
    with h5py.File(path, "r") as file:
        assert file.attrs["state"] == "Finished" and file["runs"][0]["state"] == b"Finished"
        assert (file["experiments"]["status"] == DONE).all() and len(file["attempts"]) == 6


# ----- array outputs and error texts through the store (format version 3) ----------------------
def arrays_on_disk(path: Path, output: str) -> list:
    """An output's arrays per experiments row, read with plain h5py as README shows."""
    with h5py.File(path, "r", locking=False) as file:
        stored, status = file[f"experiment_arrays/{output}"], file["experiments"]["status"]
        if isinstance(stored, h5py.Dataset):
            return [stored[row] if status[row] == DONE else None for row in range(len(status))]
        values, starts, shapes = stored["values"][()], stored["start"][()], stored["shape"][()]
        found = []
        for start, shape in zip(starts, shapes):
            dimensions = tuple(int(n) for n in shape if n >= 0)
            found.append(None if start < 0 else
                         values[start:start + int(np.prod(dimensions))].reshape(dimensions))
        return found


def record_arrays(table: ExperimentTable, rows: np.ndarray, arrays: list) -> None:
    from distx.results.arrays import pack

    finish(table, rows)
    table.record_arrays("result", rows, pack(arrays))


def test_arrays_of_one_shape_are_one_dataset_with_a_row_per_experiment(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, count=6)
    record_arrays(table, np.array([4, 1]), [np.arange(3.0) + 4, np.arange(3.0) + 1])
    results.checkpoint()
    with h5py.File(path, "r", locking=False) as file:
        stored = file["experiment_arrays/result"]
        assert stored.shape == (6, 3) and stored.dtype == np.float64
        assert stored[4].tolist() == [4.0, 5.0, 6.0] and np.isnan(stored[0]).all()
    results.close("Finished", 0)


def test_arrays_survive_a_crash_through_the_journal_and_change_layout_without_loss(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, count=8)
    record_arrays(table, np.array([0, 1]), [np.arange(2), np.arange(2) * 10])   # int, (2,)
    results.checkpoint()
    record_arrays(table, np.array([2]), [np.array([0.5, 1.5])])     # wider dtype: float
    record_arrays(table, np.array([3, 4]), [np.arange(5.0), np.ones((2, 2))])   # ragged
    results.flush()                  # in the journal only: the run is killed here
    expected = [[0, 1], [0, 10], [0.5, 1.5], list(range(5)), [[1, 1], [1, 1]]]
    snapshot = read_results(path, experiment_arrays)["result"]  # checkpoint + journal
    assert [array.tolist() for array in snapshot[:5]] == expected
    results.claim.release()          # what the kernel does when the process dies
    assert admin.recover(path) > 0
    found = arrays_on_disk(path, "result")
    assert [array.tolist() for array in found[:5]] == expected
    assert found[5:] == [None] * 3


def test_large_blocks_of_arrays_reach_the_journal_without_a_copy():
    """Small blocks are joined into one record, a large one goes as it came: joining every
    block since the last journal write copied all of a sweep's arrays into new memory."""
    from distx.results.arrays import pack
    from distx.results.experiments import JOINED_BYTES

    keyfields = grid(7)
    table = ExperimentTable(experiment_rows(keyfields, keyfields.ids(), ["result"], None), 1)
    width = JOINED_BYTES // 8 // 2 + 1           # two of these exceed JOINED_BYTES
    large = pack([np.full(width, 3.0), np.full(width, 4.0)])
    for row in range(3):
        record_arrays(table, np.array([row]), [np.full(10, float(row))])
    finish(table, np.array([3, 4]))
    table.record_arrays("result", np.array([3, 4]), large)
    record_arrays(table, np.array([5]), [np.full(10, 5.0)])
    records = [record for record in table.take_changes() if record.op == "arrays"]
    assert [record.arrays["rows"].tolist() for record in records] == [[0, 1, 2], [3, 4], [5]]
    assert records[1].arrays["values"] is large.values
    assert records[0].arrays["values"][:, 0].tolist() == [0.0, 1.0, 2.0]


def test_a_resume_extends_the_arrays_and_keeps_their_layout(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, count=3)
    record_arrays(table, np.array([0, 2]), [np.zeros(4), np.ones(4)])
    results.close("Finished", 0)
    results, table = start_sweep(path, count=5, resume=True, run_id="run-b")
    record_arrays(table, np.array([4]), [np.full(4, 2.0)])
    results.close("Finished", 0)
    with h5py.File(path, "r") as file:
        assert file["experiment_arrays/result"].shape == (5, 4)
    assert [None if a is None else a.tolist() for a in arrays_on_disk(path, "result")] == [
        [0.0] * 4, None, [1.0] * 4, None, [2.0] * 4]


def test_error_texts_go_to_their_own_table_joined_by_id(tmp_path):
    path = tmp_path / "out.h5"
    results, table = start_sweep(path, count=3)
    long_text = "Traceback (most recent call last):\n  ünïcode line\n" + "x" * 10_000
    table.record_attempts(np.array([1, 1]), np.zeros(2), np.array([1, 2]), 1, "h1",
                          np.zeros(2), np.ones(2), np.zeros(2, dtype=bool),
                          {0: "first try", 1: long_text})
    table.record(1, Status.ERROR, 1, "h1", 2, 0.0, 1.0, {})
    results.close("Finished", 1)
    with h5py.File(path, "r") as file:
        assert "error" not in file["experiments"].dtype.names
        assert "error" not in file["attempts"].dtype.names
        errors = file["errors"][()]
    assert [(int(row["attempt"]), row["error"].decode()) for row in errors] == [
        (1, "first try"), (2, long_text)]
    assert read_results(path, error_texts) == {errors["id"][0]: long_text}


def test_text_arrays_keep_every_byte_when_stored_nul_terminated(tmp_path):
    path = tmp_path / "t.h5"
    with h5py.File(path, "w") as file:
        checkpoint.apply(file, [Record("dataset", {"name": "words"},
                                       {"data": np.array([b"longest", b"a"])})])
    with h5py.File(path, "r") as file:
        assert file["words"][()].tolist() == [b"longest", b"a"]


def test_the_first_sweep_of_a_file_this_run_made_does_not_read_it_back(tmp_path, monkeypatch):
    """Reading the file to find no table cost a copy of it with the journal applied
    (0.13 s on 64 ranks, whose milestones were in the journal)."""
    from distx.results import writer

    results = ResultsFile.open(tmp_path / "new.h5", identity())
    results.record_milestone(1, "workers", "started", 1.0, "")   # a journal record
    results.flush()
    monkeypatch.setattr(writer, "snapshot", lambda *_: pytest.fail("read the file back"))
    keyfields = grid(3)
    table = results.experiments(keyfields, keyfields.ids(), ["result"])
    assert len(table.rows) == 3
    results.close("Finished", 0)


def test_a_sweeps_expected_attempts_fill_one_block_made_at_once():
    """Doubling the block as batches came cost a copy into new memory each time (page
    faults: 0.5 us an attempt); told how many are coming, the table makes it once, and
    after a hand-over the next block is made for what is still to come."""
    keyfields = grid(8000)
    table = ExperimentTable(experiment_rows(keyfields, keyfields.ids(), ["result"], None), 1)
    table.expect_attempts(8000)
    for first in range(0, 6000, 1500):
        finish(table, np.arange(first, first + 1500))
    handed = [record for record in table.take_changes() if record.op == "append"]
    rows = handed[0].arrays["rows"]
    assert rows["id"].tolist() == table.rows["id"][:6000].tolist()
    assert len(rows.base) == 8000
    finish(table, np.arange(6000, 8000))
    assert len(table.take_changes()[-1].arrays["rows"].base) == 2000


def test_tables_written_as_stored_read_back_cell_for_cell(tmp_path):
    """Fixed-width text goes in without HDF5's conversion: the file keeps NUL-terminated
    text, and every cell, a value as wide as its column included, reads back as written."""
    keyfields = Grid({"word": ["a", "widest-value"], "seed": [1, 2]})
    path = tmp_path / "t.h5"
    results = ResultsFile.open(path, identity())
    table = results.experiments(keyfields, keyfields.ids(), ["result"])
    finish(table, np.arange(4))
    results.close("Finished", 0)
    with h5py.File(path, "r") as file:
        stored = file["experiments"].id.get_type()
        word = stored.get_member_type(stored.get_member_index(b"word"))
        assert word.get_strpad() == h5py.h5t.STR_NULLTERM
        assert (file["experiments"][()] == table.rows).all()
        attempts = file["attempts"][()]
    assert attempts["host"].tolist() == [b"h1"] * 4
    assert sorted(attempts["id"].tolist()) == sorted(table.rows["id"].tolist())


def test_a_checkpoint_writes_a_run_of_appends_per_table_in_order(tmp_path):
    """Thousands of one-row records (a milestone each) are written as one append per table,
    each table keeping its own order, and an op in between still sees what came before."""
    from distx.results.layout import ERRORS

    def errors(attempt: int) -> Record:
        rows = np.zeros(1, dtype=ERRORS)
        rows["attempt"], rows["error"] = attempt, f"e{attempt}"
        return Record("append", {"table": "errors"}, {"rows": rows})

    def attempts(attempt: int) -> Record:
        rows = np.zeros(1, dtype=checkpoint.APPEND_TABLES["attempts"])
        rows["attempt"] = attempt
        return Record("append", {"table": "attempts"}, {"rows": rows})

    records = [record for attempt in range(3000)
               for record in (errors(attempt), attempts(attempt))]
    records.insert(4000, Record("attrs", {"attrs": {"marker": 1}}, {}))
    with h5py.File(tmp_path / "f.h5", "w") as file:
        checkpoint.apply(file, records)
        assert file["errors"]["attempt"].tolist() == list(range(3000))
        assert file["attempts"]["attempt"].tolist() == list(range(3000))
        assert file["errors"]["error"][-1] == b"e2999" and file.attrs["marker"] == 1


def test_a_run_of_appends_is_journaled_as_one_record_per_table(tmp_path):
    """A milestone round trip made two journal records of one row each (~10 us each to
    encode); a run of appends is now one record per table, each keeping its order, and
    a record in between still separates the runs. Recovery reads them all back."""
    path = tmp_path / "out.h5"
    results = ResultsFile.open(path, identity())
    results.flush()
    before = len(journal.read(journal.journal_path(path)))
    for number in range(500):
        results.record_milestone(number % 2, "r", f"m{number}", float(number), "")
        results.record_log(1, {"role": "r", "index": 0, "log": [(float(number), "INFO",
                                                                   f"l{number}")]})
        if number == 249:
            results.record_value(1, {"role": "r", "key": "k", "time": 1.0,
                                     "value": np.arange(3.0)})   # a dataset record
    results.flush()
    records = journal.read(journal.journal_path(path))[before:]
    assert [(record.op, record.fields.get("table")) for record in records] == [
        ("append", "milestones"), ("append", "logs"), ("dataset", None),
        ("append", "values"), ("append", "milestones"), ("append", "logs")]
    results.claim.release()          # "killed" here, as in the crash test above
    assert admin.recover(path) > 0
    with h5py.File(path) as file:
        names, lines = file["milestones"]["name"], file["logs"]["message"]
        assert [name.decode() for name in names] == [f"m{n}" for n in range(500)]
        assert [line.decode() for line in lines] == [f"l{n}" for n in range(500)]


def test_a_second_writer_waits_for_the_claim_to_name_its_run(tmp_path):
    """The holder takes the lock, then writes who it is: a process refused in between
    still names the run (15 simultaneous starts once read an empty claim)."""
    import fcntl
    import threading

    results = tmp_path / "out.h5"
    fd = os.open(str(results) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    claim = {"host": "h", "pid": 1, "run_id": "r-late", "started": "now", "purpose": "run"}
    writer = threading.Timer(0.2, os.pwrite, (fd, json.dumps(claim).encode(), 0))
    writer.start()
    try:
        with pytest.raises(UserError, match="being written by run r-late"):
            Claim(results, "r-second", "run")
    finally:
        writer.join()
        os.close(fd)
