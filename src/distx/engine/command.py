"""Run.CliExecute: one shell command in a process group of its own, and the files it leaves.

- Values never become code: the command line was lexed before expansion (see
  script/shell.py) and each value travels in an environment variable.
- The command runs in the rank's own temp folder unless `CWD` says otherwise, so ranks do
  not write over each other's files.
- It runs in a new session (its own process group). On timeout or cancel the whole group
  is killed at once; groups still alive at the end of the run (commands that left
  background children) are killed then. A child that starts a session of its own escapes.
- `Keep` gathers only files under the command's folder that this command created or
  changed (compared with a snapshot taken before it started), never a path that resolves
  outside the folder (`..`, absolute patterns, symlinks), each up to KEEP_MAX_BYTES.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from distx.errors import TaskFailed
from distx.lazy import numpy as np
from distx.script.expand import expand_text
from distx.script.shell import ShellCommand, UnsafeReference, compile_command

if TYPE_CHECKING:
    from distx.engine.taskrun import Executor, TaskRun
    from distx.script.model import Script, TaskSpec

KEEP_MAX_BYTES = 256 << 20  # one kept file travels to rank 0 in one message


def execute(run: TaskRun, config: dict) -> None:
    """The body of Run.CliExecute (`config` expanded, except Parameters)."""
    folder = _folder(run, config.get("CWD"))
    command = compile_command(config["Parameters"])  # validation refused unsafe ones
    environment = _environment(run, command)
    patterns = config.get("Keep", [])
    for pattern in patterns:
        problem = keep_pattern_problem(pattern)
        if problem:  # a pattern that came in through a reference
            raise TaskFailed(f"{problem}: {KEEP_FIX}")
    before = _snapshot(folder, patterns)
    shown = "; ".join(f"{reference}={environment[command.variable(number)]!r:.200}"
                      for number, reference in enumerate(command.references))
    run.log(f"$ {config['Parameters']}  (in {folder}" + (f"; {shown}" if shown else "") + ")")
    returncode, lines = _run(run, command, environment, folder, config)
    for line in lines:
        run.log(line, "OUTPUT")
    too_big = _keep_changed(run, folder, patterns, before)
    if returncode != 0:
        tail = "\n".join(lines[-5:])
        raise TaskFailed(f"command exited with code {returncode}"
                         + (f"; last output:\n{tail}" if tail else ""))
    if too_big:
        raise TaskFailed(too_big)


def check_command(script: Script, spec: TaskSpec) -> None:
    """At validation: references only where the shell takes them as data; Keep only
    under CWD."""
    try:
        compile_command(spec.config["Parameters"])
    except UnsafeReference as error:
        raise script.error((*spec.where, "Config", "Parameters"), str(error),
                           error.fix) from None
    for position, pattern in enumerate(spec.config.get("Keep", [])):
        problem = keep_pattern_problem(pattern)
        if problem:
            raise script.error((*spec.where, "Config", "Keep", position), problem, KEEP_FIX)


def keep_pattern_problem(pattern: str) -> str | None:
    """Why a Keep glob may not be used (it could reach outside the command's folder)."""
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        return f"Keep pattern {pattern!r} reaches outside the command's folder"
    return None


KEEP_FIX = ("Keep gathers files under CWD only: write a pattern relative to CWD without "
            "'..', and set CWD to the folder to keep files from")


def _folder(run: TaskRun, cwd: str | None) -> Path:
    """The command's folder: CWD (relative to the script's folder), else the rank's own."""
    executor = run.executor
    if cwd is None:
        return executor.temp_folder
    folder = Path(cwd)
    if not folder.is_absolute():
        folder = executor.script_folder / folder
    if not folder.is_dir():
        raise TaskFailed(f"CWD {folder} is not a folder")
    return folder


def _environment(run: TaskRun, command: ShellCommand) -> dict[str, str]:
    """This process's environment plus the value of each reference of the command."""
    executor = run.executor
    values = [expand_text(reference, executor.expansion_values, executor.builtins)
              for reference in command.references]
    try:
        return command.environment(values, os.environ)
    except ValueError as error:
        raise TaskFailed(str(error)) from None


def _run(run: TaskRun, command: ShellCommand, environment: dict[str, str], folder: Path,
         config: dict) -> tuple[int, list[str]]:
    """Run the command to its end (serving meanwhile); its exit code and output lines."""
    groups = run.executor.command_groups
    with tempfile.TemporaryFile(mode="w+b") as output:
        process = subprocess.Popen(["/bin/sh", "-c", command.script], cwd=folder,
                                   env=environment, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        groups.add(process.pid)
        try:
            run.core.wait_until(lambda: process.poll() is not None, run.timeout(config),
                               f"command {config['Parameters']!r}")
        finally:
            if process.poll() is None:  # timed out or cancelled
                kill_group(process.pid)
                process.wait()
            if not _group_alive(process.pid):  # nothing left in the background
                groups.discard(process.pid)
        output.seek(0)
        return process.returncode, output.read().decode(errors="replace").splitlines()


def end_commands(executor: Executor) -> None:
    """At the end of the run: kill what this rank's commands left in the background."""
    for group in executor.command_groups:
        kill_group(group)
    executor.command_groups.clear()


def kill_group(group: int) -> None:
    """Kill every process of a command's process group (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    """True while a process of the group is left (then its number is not reused)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----- Keep --------------------------------------------------------------------------------
def _snapshot(folder: Path, patterns: list[str]) -> dict[Path, tuple[int, int, int, int]]:
    """What each file matching a Keep pattern looks like now (to tell what changes)."""
    found = {}
    for pattern in patterns:
        for path in folder.glob(pattern):
            with contextlib.suppress(OSError):
                status = path.stat()
                found[path] = (status.st_ino, status.st_size, status.st_mtime_ns,
                               status.st_ctime_ns)
    return found


def _keep_changed(run: TaskRun, folder: Path, patterns: list[str],
                  before: dict[Path, tuple[int, int, int, int]]) -> str:
    """Keep what the command created or changed; the first oversize problem, or ''."""
    inside = folder.resolve()
    after = _snapshot(folder, patterns)
    problem = ""
    for path in sorted(after):
        if after[path] == before.get(path) or not path.is_file():
            continue
        if not path.resolve().is_relative_to(inside):
            run.log(f"not kept: {path} leads outside {inside}", "WARNING")
            continue
        oversize = _keep(run, path, path.relative_to(folder).as_posix())
        problem = problem or oversize
    return problem


def _keep(run: TaskRun, path: Path, name: str) -> str:
    """Send one file to rank 0; a file over the limit is reported, not read."""
    data = _read_at_most(path, KEEP_MAX_BYTES)
    if data is None:
        problem = (f"kept file {name} is larger than Keep's limit of "
                   f"{KEEP_MAX_BYTES >> 20} MiB: write large outputs to a shared folder "
                   "and keep a small summary")
        run.log(problem, "ERROR")
        return problem
    run.keep_file(path, name, np.frombuffer(data, dtype=np.uint8))
    return ""


def _read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None if it holds more than `limit` bytes."""
    if path.stat().st_size > limit:
        return None
    with open(path, "rb") as file:
        data = file.read(limit + 1)  # it may have grown since
    return None if len(data) > limit else data
