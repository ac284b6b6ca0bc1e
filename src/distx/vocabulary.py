"""The words every layer shares: run states, milestones, experiment and task statuses, exit
codes. One definition each, so that no module spells `"done"` or `3` on its own.

Message kinds and the bodies they carry belong to the engine's protocol (engine/protocol.py);
everything here is also written into, or read from, the results file.
"""

from __future__ import annotations

import enum


class RunState(str, enum.Enum):
    """The state of a run, as the results file records it (and as its terminal milestone)."""

    RUNNING = "Running"
    FINISHED = "Finished"
    CANCELLED = "Cancelled"
    ERRORED = "Errored"


TERMINAL = (RunState.FINISHED.value, RunState.CANCELLED.value, RunState.ERRORED.value)
"""The milestones that end a rank's sequence; exactly one of them is reached, with a cause."""

INIT, PRE_RUN, RUN, POST_RUN = "Init", "PreRun", "Run", "PostRun"
"""Rank up; data being distributed; sequence started; sequence done (before its terminal)."""

STARTED = (INIT, PRE_RUN, RUN)
"""Reached automatically before a rank's sequence: rank up, data distributed, sequence on."""

AUTOMATIC = (*STARTED, POST_RUN, *TERMINAL)
"""Every milestone a rank reaches by itself; a script may not add one of these."""


class Status(str, enum.Enum):
    """The status of an experiment (and of one attempt at one of its tasks)."""

    CREATED = "created"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"

    @property
    def encoded(self) -> bytes:
        """As stored in a fixed-width column of the results file."""
        return self.value.encode()


LOST = "lost"
"""The status of an attempt (in /attempts only) whose rank died before reporting it: not an
error and not counted against Retries; its task went back on the queue (ULFM runs)."""


class TaskStatus(str, enum.Enum):
    """How one task of a role's sequence ended."""

    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


class ExitCode(enum.IntEnum):
    """What `distx` returns."""

    OK = 0          # every task finished and every experiment is done
    FAILED = 1      # a task failed, a wait timed out, or an experiment ended in error
    BAD_INPUT = 2   # script, kernel, data or results file refused before anything was written
    STOPPED = 3     # stopped by a signal; --resume continues
