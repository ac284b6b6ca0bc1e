"""Administration of results files: what may be written or replaced, recover, reset.

Each change goes through a checkpoint (a new file renamed over the old one) under the
file's claim, so a kill at any moment leaves the old file or the new one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import h5py

from distx.errors import UserError
from distx.results import checkpoint, journal
from distx.results.claim import Claim
from distx.results.experiments import ExperimentTable
from distx.results.layout import FORMAT
from distx.results.reader import HDF5_SIGNATURE, read_results
from distx.vocabulary import Status


def check_output_path(path: Path) -> None:
    """Refuse, before anything is written, a results path that cannot hold a file."""
    if path.is_dir():
        raise UserError("the output is a folder", file=str(path),
                        fix="give a file name, e.g. --output results.h5")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"the output's folder {folder} is a file", file=str(path),
                        fix="give a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the folder {folder} is not writable", file=str(path),
                        fix="give an --output in a folder you can write")


def check_replaceable(path: Path) -> None:
    """--overwrite replaces only a distx results file: refuse anything else untouched."""
    refusal = _not_results(path)
    if refusal:
        raise UserError(f"--overwrite replaces only a distx results file, and this is "
                        f"{refusal}", file=str(path),
                        fix="give another --output, or remove the file yourself")


def _not_results(path: Path) -> str | None:
    if not path.is_file():
        return "not a regular file"
    with path.open("rb") as raw:
        if raw.read(8) != HDF5_SIGNATURE:
            return "not an HDF5 file"
    try:
        with h5py.File(path, "r", locking=False) as file:
            if file.attrs.get("format") != FORMAT:
                return "an HDF5 file not written by distx"
    except OSError:
        return "an unreadable HDF5 file"
    return None


def recover(path: Path, claimed: bool = False) -> int:
    """Apply what a killed run left in the journal to the file (a checkpoint); returns the
    number of records replayed. `claimed`: the caller holds the file's claim."""
    claim = None if claimed else Claim(path, "recover", "recover")
    try:
        def pending(file: h5py.File) -> tuple[str, int, list[journal.Record]]:
            seq = int(file.attrs.get("journal_seq", 0))
            file_id = str(file.attrs.get("file_id", ""))
            records = journal.read(journal.journal_path(path), file_id)
            return file_id, seq, journal.after(records, seq) or []

        file_id, seq, records = read_results(path, pending) if _has_journal(path) \
            else ("", 0, [])
        if records:
            checkpoint.replace(path, records, records[-1].seq, file_id)
        journal.journal_path(path).unlink(missing_ok=True)
        for leftover in checkpoint.leftovers(path):
            leftover.unlink(missing_ok=True)
        return len(records)
    finally:
        if claim is not None:
            claim.release()


def _has_journal(path: Path) -> bool:
    return journal.journal_path(path).exists()


def reset_experiments(path: str | Path, statuses: set[str]) -> dict[str, int]:
    """Set experiments with one of `statuses` back to `created`; their attempts stay.

    Rows keep their ids and positions, and /attempts keeps every earlier attempt (unlike
    PyExperimenter's reset, which deletes rows and creates new ids).
    """
    known = {status.value for status in Status}
    unknown = statuses - known
    if unknown:
        raise UserError(f"unknown status {', '.join(sorted(unknown))}",
                        fix="use " + ", ".join(known))
    path = Path(path)
    read_results(path, lambda file: None)
    claim = Claim(path, "reset", "reset")
    try:
        recover(path, claimed=True)
        counts: dict[str, int] = {}

        def reset(file: h5py.File) -> None:
            if "experiments" in file:
                table = ExperimentTable(file["experiments"][()], run=-1)
                counts.update(table.reset(statuses))
                file["experiments"][...] = table.rows

        seq, file_id = read_results(path, lambda file: (
            int(file.attrs.get("journal_seq", 0)), str(file.attrs.get("file_id", ""))))
        checkpoint.replace(path, [], seq, file_id or _new_id(), edit=reset)
        return counts
    finally:
        claim.release()


def _new_id() -> str:
    return secrets.token_hex(8)
