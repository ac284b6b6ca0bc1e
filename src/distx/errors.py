"""The exceptions distx turns into one-line messages for people.

`UserError` is bad input (script, data, kernel, results file): exit code 2, no results file
touched. `TaskFailed` is a task that failed while the run was going: the rank reaches
Errored, the run exits 1. Anything else is a bug in distx and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Input that distx cannot run: names the file, the place and the fix."""

    def __init__(self, what: str, *, file: str | None = None, line: int | None = None,
                 where: str | None = None, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.file = file
        self.line = line
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = self.file + (f", line {self.line}" if self.line else "")
        if self.where:
            place = f"{place} ({self.where})" if place else self.where
        text = f"{place}: {self.what}" if place else self.what
        if self.fix:
            text += ("" if text.endswith((".", "?", "!")) else ".") + f" Fix: {self.fix}"
        # One line, whatever the input put into names and values (a key "a\nb").
        return text.replace("\r", "\\r").replace("\n", "\\n")


class TaskFailed(Exception):
    """A task could not complete; the message is what the user reads in the results file."""


class Cancelled(Exception):
    """The coordinator ended the run while this rank was still in its sequence."""
