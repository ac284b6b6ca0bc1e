"""One writer per results file: a claim file held with an OS lock for the whole run.

`<results>.lock` holds who writes the file (host, pid, start time, run id) and is locked
with flock(2) by that process. The kernel drops the lock when the process dies, however it
dies, so a claim left by a killed run is simply taken over; a claim whose lock is held
refuses the second writer with that run's description.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from distx.errors import UserError


def lock_path(results: Path) -> Path:
    return results.with_name(results.name + ".lock")


class Claim:
    """The lock on one results file, held until `release()` (or the process ends)."""

    def __init__(self, results: Path, run_id: str, purpose: str) -> None:
        self.path = lock_path(results)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(fd)
                os.close(fd)
                raise UserError(f"cannot {purpose}: it is being written by {holder}",
                                file=str(results), fix="wait for that run to end, or write "
                                "to another --output") from None
            if _same_file(fd, self.path):  # not unlinked by a writer that just ended
                break
            os.close(fd)
        self.fd = fd
        claim = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "purpose": purpose}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(claim).encode(), 0)

    def release(self) -> None:
        """Remove the claim file, then let go of the lock (in that order: a process that
        opened the file meanwhile sees it unlinked and tries again)."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


CLAIM_WRITE_SECONDS = 1.0
"""How long a refused process waits for the holder's description: the holder writes it
right after taking the lock, and of 15 simultaneous starts one read it empty in between."""


def _describe(fd: int) -> str:
    deadline = time.monotonic() + CLAIM_WRITE_SECONDS
    while True:
        try:
            claim = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return (f"run {claim['run_id']} ({claim['purpose']}; host {claim['host']}, pid "
                    f"{claim['pid']}, started {claim['started']})")
        except (ValueError, KeyError, OSError):
            if time.monotonic() > deadline:
                return "another distx process (its claim is being written)"
            time.sleep(0.01)
