"""One rank of a run: its role's sequence, its milestones and values, and serving others.

Every rank runs its role's Sequence in order. Whenever it waits (for a milestone, a value,
a process, a halo, sweep results, the end of the run) it serves the messages addressed to
it: records milestones, answers value requests, runs sweep tasks. A milestone is sent to
every rank the moment it is reached, so a waiter wakes on the message, not on a poll.

Milestones: Init (rank ready), PreRun (data distribution), Run (sequence starts), PostRun
(sequence done), then exactly one of Finished / Cancelled / Errored. A terminal milestone
carries its cause, so a rank waiting on an Errored peer fails at once, naming it.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import traceback
from collections import ChainMap
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distx.engine.command import kill_group
from distx.engine.data import Partition
from distx.engine.kernels import KernelLibrary
from distx.engine.tasks import TASKS, TaskType
from distx.engine.transport import Kind, Message, Transport
from distx.engine.watchdog import WATCHDOG
from distx.engine.worker import SweepWorker
from distx.errors import Cancelled, TaskFailed, UserError
from distx.script.expand import expand
from distx.script.model import Script, TaskSpec
from distx.script.roles import RolePlan
from distx.script.schema import check_expanded
from distx.vocabulary import TERMINAL

ABORT_WAIT = 30.0  # how long a rank stuck in a kernel waits for rank 0 to abort the job
_SERVE_SLICE = 0.05


@dataclass(frozen=True)
class RunInfo:
    """What every rank knows about the run, identical on all ranks."""

    script: Script
    plan: RolePlan
    run_id: str
    timeout: float
    overrides: dict
    hosts: tuple[str, ...]
    temp_root: Path
    verbose: bool = False
    grace: float = 30.0


class Runtime:
    def __init__(self, transport: Transport, info: RunInfo) -> None:
        self.transport = transport
        self.info = info
        self.rank = transport.rank
        self.role = info.plan.role_of[self.rank]
        self.script_folder = info.script.folder
        self.temp_folder = info.temp_root / f"rank{self.rank}"
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        self.values: dict[str, Any] = {}
        self.expansion_values = ChainMap(self.values, info.overrides, info.script.parameters)
        self.milestones: dict[int, dict[str, float]] = {r: {} for r in range(info.plan.size)}
        self.terminal: dict[int, tuple[str, str]] = {}
        self.pending_requests: list[tuple[int, int, str]] = []
        self.replies: dict[int, tuple[bool, Any]] = {}
        self.request_ids = itertools.count()
        self.halos: dict[tuple[str, int, str], np.ndarray] = {}
        self.partitions: dict[str, Partition] = {}
        self.kernels = KernelLibrary(info.script.kernels_dir)
        self.sweep_worker = SweepWorker(self)
        self.sequence_done = False
        self.cancel_requested = False
        self.stop_requested = False    # rank 0: stop gracefully (a signal reached some rank)
        self.signalled = False         # this process got SIGTERM/SIGINT/SIGUSR1
        self._stop_forwarded = False
        self.exit_code: int | None = None
        self.command_groups: set[int] = set()  # process groups of Run.CliExecute commands
        self.handlers: dict[Kind, Callable[[int, Any], None]] = {
            Kind.MILESTONE: self.on_milestone,
            Kind.VALUE_REQUEST: self.on_value_request,
            Kind.VALUE_REPLY: self.on_value_reply,
            Kind.HALO: self.on_halo,
            Kind.CONTROL: self.on_control,
            Kind.SWEEP_START: self.sweep_worker.on_start,
            Kind.SWEEP_TASKS: self.sweep_worker.on_tasks,
        }

    # ----- identity -------------------------------------------------------------------
    @property
    def builtins(self) -> dict[str, Any]:
        return {"RunId": self.info.run_id, "Rank": self.rank, "Size": self.info.plan.size,
                "Role": self.role, "Name": self.info.script.name,
                "TempFolder": str(self.temp_folder), "Host": self.info.hosts[self.rank],
                "ScriptFolder": str(self.script_folder)}

    def describe(self, rank: int) -> str:
        return self.info.plan.describe(rank)

    # ----- serving --------------------------------------------------------------------
    def on_signal(self) -> None:
        """From a signal handler: only set a flag; serving forwards it to rank 0."""
        self.signalled = True

    def _forward_signal(self) -> None:
        """Once, after a signal: rank 0 stops; another rank asks rank 0 to."""
        if not self.signalled or self._stop_forwarded:
            return
        self._stop_forwarded = True
        if self.rank == 0:
            self.request_stop()
        else:
            self.transport.send(0, Kind.CONTROL, ("stop",))

    def request_stop(self) -> None:
        """Stop gracefully: no new work (rank 0 bounds the stop, see Coordinator)."""
        self.stop_requested = True

    def serve_once(self, timeout: float | None) -> bool:
        self._forward_signal()
        message = self.transport.receive(timeout)
        if message is None:
            return False
        self.dispatch(message)
        return True

    def dispatch(self, message: Message) -> None:
        handler = self.handlers.get(message.kind)
        if handler is None:
            raise RuntimeError(f"rank {self.rank} got unexpected {message.kind.name} "
                               f"from rank {message.source}")
        handler(message.source, message.body)

    def check_cancel(self, doing: str, stoppable: bool = True) -> None:
        self._forward_signal()
        if self.cancel_requested:
            raise Cancelled(f"run cancelled {doing}")
        if stoppable and self.stop_requested:
            raise Cancelled(f"stopped by a signal {doing}")

    def wait_until(self, condition: Callable[[], bool], timeout: float | None,
                   what: str, stoppable: bool = True) -> None:
        """Serve messages until `condition()` holds; fail after `timeout` s or on cancel.

        A stop request (a signal) ends the wait too unless `stoppable` is False: the
        sweep handles it itself, letting tasks in flight finish.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not condition():
            self.check_cancel(f"while waiting for {what}", stoppable)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TaskFailed(f"timed out after {timeout:g} s waiting for {what}")
            self.serve_once(_SERVE_SLICE if remaining is None else min(remaining, _SERVE_SLICE))

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_cancel("during Run.Delay")
            self.serve_once(min(end - time.monotonic(), _SERVE_SLICE))

    def serve_until_shutdown(self) -> None:
        while self.exit_code is None:
            self.serve_once(_SERVE_SLICE)

    # ----- milestones -----------------------------------------------------------------
    def reach(self, name: str, detail: str = "") -> None:
        body = (name, time.time(), detail)
        for rank in range(self.info.plan.size):
            if rank != self.rank:
                self.transport.send(rank, Kind.MILESTONE, body)
        self.on_milestone(self.rank, body)

    def on_milestone(self, source: int, body: tuple) -> None:
        name, when, detail = body
        self.milestones[source][name] = when
        if name in TERMINAL:
            self.terminal[source] = (name, detail)

    def wait_for_milestone(self, name: str, ranks: tuple[int, ...], timeout: float) -> None:
        def reached() -> bool:
            missing = [rank for rank in ranks if name not in self.milestones[rank]]
            for rank in missing:
                self._fail_if_terminal(rank, f"without reaching milestone {name}")
            return not missing
        self.wait_until(reached, timeout, f"milestone {name} from "
                        + ", ".join(self.describe(rank) for rank in ranks))

    def _fail_if_terminal(self, rank: int, outcome: str) -> None:
        if rank in self.terminal:
            state, detail = self.terminal[rank]
            raise TaskFailed(f"{self.describe(rank)} {state.lower()} {outcome}"
                             + (f": {detail}" if detail else ""))

    # ----- values ---------------------------------------------------------------------
    def publish(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.emit("value", {"role": self.role, "key": key, "value": value, "time": time.time()})
        still_waiting = []
        for source, request_id, wanted in self.pending_requests:
            if wanted == key:
                self.transport.send(source, Kind.VALUE_REPLY, (request_id, True, value))
            else:
                still_waiting.append((source, request_id, wanted))
        self.pending_requests = still_waiting

    def on_value_request(self, source: int, body: tuple) -> None:
        request_id, key = body
        if key in self.values:
            self.transport.send(source, Kind.VALUE_REPLY, (request_id, True, self.values[key]))
        elif self.sequence_done:
            self.transport.send(source, Kind.VALUE_REPLY,
                                (request_id, False, f"it finished its sequence without "
                                 f"publishing '{key}'"))
        else:
            self.pending_requests.append((source, request_id, key))

    def on_value_reply(self, source: int, body: tuple) -> None:
        request_id, found, value = body
        self.replies[request_id] = (found, value, source)

    def get_values(self, key: str, ranks: tuple[int, ...], timeout: float) -> list:
        """The value `key` from each of `ranks` (in rank order), asking those not this one."""
        asked: dict[int, int] = {}
        for rank in ranks:
            if rank == self.rank:
                if key not in self.values:
                    raise TaskFailed(f"'{key}' is not published on this rank")
            else:
                request_id = next(self.request_ids)
                asked[rank] = request_id
                self.transport.send(rank, Kind.VALUE_REQUEST, (request_id, key))

        def answered() -> bool:
            for rank, request_id in asked.items():
                if request_id in self.replies:
                    found, value, _ = self.replies[request_id]
                    if not found:
                        raise TaskFailed(f"{self.describe(rank)} cannot give '{key}': {value}")
                elif self.terminal.get(rank, ("",))[0] in ("Errored", "Cancelled"):
                    self._fail_if_terminal(rank, f"before publishing '{key}'")
            return all(request_id in self.replies for request_id in asked.values())
        try:
            self.wait_until(answered, timeout, f"value '{key}' from "
                            + ", ".join(self.describe(rank) for rank in asked))
            return [self.values[key] if rank == self.rank else self.replies[asked[rank]][1]
                    for rank in ranks]
        finally:
            for request_id in asked.values():
                self.replies.pop(request_id, None)

    # ----- other messages ----------------------------------------------------------------
    def on_halo(self, source: int, body: tuple) -> None:
        name, step, side, rows = body
        self.halos[(name, step, side)] = rows

    def on_control(self, source: int, body: tuple) -> None:
        if body[0] == "cancel":
            self.cancel_requested = True
        elif body[0] == "stop":
            self.request_stop()
        elif body[0] == "shutdown":
            self.exit_code = body[1]

    def emit(self, kind: str, record: dict) -> None:
        """Send a record for the results file to rank 0."""
        self.transport.send(0, Kind.EVENT, (kind, record))

    # ----- data -----------------------------------------------------------------------
    def kernel_arguments(self, inputs: list[str], args: dict) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for name in inputs:
            if name not in self.partitions:
                raise TaskFailed(f"{self.describe(self.rank)} holds no partition of '{name}' "
                                 f"(partitions live on ranks {list(self.info.plan.holders)})")
            arguments[name] = self.partitions[name].array
        if inputs:
            first = self.partitions[inputs[0]]
            arguments.update(row_offset=first.offset, global_rows=first.global_shape[0],
                             global_shape=tuple(first.global_shape))
        arguments.update(args)
        return arguments

    def preload_kernels(self) -> None:
        """Import the kernel modules this rank will call, before its sequence starts.

        Importing numba costs a fraction of a second per process; doing it here overlaps
        with rank 0's own start-up instead of delaying the first kernel task or sweep.
        Problems are left to the task that uses the kernel, which reports them properly.
        """
        script = self.info.script
        sweeps = self.rank in self.info.plan.holders
        for spec in script.tasks():
            mine = spec.role == self.role or (sweeps and spec.task == "Run.Sweep")
            if mine and spec.kernel:
                with contextlib.suppress(UserError):
                    self.kernels.get(spec.kernel)

    # ----- the sequence ---------------------------------------------------------------------
    def run_sequence(self) -> str:
        """Run this rank's role sequence; return the terminal state reached."""
        self.reach("Run")
        sequence = self.info.script.roles[self.role].sequence \
            if self.role in self.info.script.roles else ()
        previous_log: list[str] = []
        try:
            for spec in sequence:
                self.check_cancel(f"before task {spec.index} {spec.task}")
                previous_log = TaskRun(self, spec, previous_log).execute()
        except Cancelled as stop:
            return self._end_sequence("Cancelled", str(stop))
        except TaskFailed as failure:
            return self._end_sequence("Errored", str(failure).splitlines()[0])
        self.reach("PostRun")
        return self._end_sequence("Finished", "")

    def _end_sequence(self, state: str, detail: str) -> str:
        self.sequence_done = True
        for source, request_id, key in self.pending_requests:
            self.transport.send(source, Kind.VALUE_REPLY,
                                (request_id, False, f"it reached {state} without publishing "
                                 f"'{key}'" + (f" ({detail})" if detail else "")))
        self.pending_requests = []
        self.reach(state, detail)
        return state

    # ----- a kernel past its Timeout ---------------------------------------------------------
    def overdue_kernel_text(self, kernel: str, timeout: float) -> str:
        return (f"kernel {kernel} on {self.describe(self.rank)} ran past its Timeout of "
                f"{timeout:g} s; a kernel cannot be interrupted, so the run is aborted")

    def echo(self, text: str, severity: str) -> None:
        """A line on stderr naming this rank."""
        print(f"[{self.describe(self.rank)}] {severity}: {text}", file=sys.stderr, flush=True)

    def kernel_stuck(self, record: dict) -> None:
        """From the watchdog thread: this rank is lost in a kernel call.

        Rank 0 learns why (and records the task or experiment), every rank sees this one
        reach Errored, so the run ends as for any error; rank 0 then aborts the MPI job,
        which is the only way to end this process. If that does not come, abort here.
        """
        error = record["error"]
        self.echo(error, "ERROR")
        self.transport.send_from_thread(0, Kind.EVENT, ("stuck", record))
        body = ("Errored", time.time(), error)
        for rank in range(1, self.info.plan.size):  # rank 0 records it from the event
            if rank != self.rank:
                self.transport.send_from_thread(rank, Kind.MILESTONE, body)
        time.sleep(ABORT_WAIT)
        self.transport.abort(1)

    def end_commands(self) -> None:
        """At the end of the run: kill what commands left running in the background."""
        for group in self.command_groups:
            kill_group(group)
        self.command_groups.clear()

    def run_as_worker(self) -> None:
        """A rank other than 0: its sequence, then serving until the coordinator ends it."""
        self.run_sequence()
        self.serve_until_shutdown()
        self.end_commands()
        self.transport.close()


class TaskRun:
    """One task being executed: its expanded config, its log, its place in the sequence."""

    def __init__(self, runtime: Runtime, spec: TaskSpec, previous_log: list[str]) -> None:
        self.runtime = runtime
        self.spec = spec
        self.previous_log = previous_log
        self.lines: list[tuple[float, str, str]] = []

    def execute(self) -> list[str]:
        """Run the task, report it to rank 0, return its log text for the next task."""
        task_type = TASKS[self.spec.task]
        start, status, error = time.time(), "done", ""
        try:
            config = self._expanded_config(task_type)
            task_type.run(self, config)
        except (TaskFailed, UserError) as failure:
            status, error = "error", str(failure)
            self.log(error, "ERROR")
            raise TaskFailed(f"task {self.spec.index} {self.spec.task} failed: {failure}") \
                from failure
        except Cancelled as stop:
            status, error = "cancelled", str(stop)
            raise
        except Exception as bug:
            status = "error"
            error = f"{type(bug).__name__}: {bug}\n" + "".join(traceback.format_exception(bug))
            self.log(error, "ERROR")
            raise TaskFailed(f"task {self.spec.index} {self.spec.task} failed: "
                             f"{type(bug).__name__}: {bug}") from bug
        finally:
            self.runtime.emit("task", self.record(status, start, error))
            if status == "error":
                self.runtime.echo(f"task {self.spec.index} {self.spec.task} failed: "
                           f"{error.splitlines()[0] if error else ''}", "ERROR")
        return [text for _, _, text in self.lines]

    def record(self, status: str, start: float, error: str) -> dict:
        """The task's row of /tasks, with its log lines."""
        return {"role": self.spec.role, "index": self.spec.index, "task": self.spec.task,
                "status": status, "start": start, "end": time.time(), "error": error,
                "log": self.lines}

    def kernel_timeout(self, config: dict, kernel: str) -> AbstractContextManager:
        """Around one kernel call: with a Timeout in the config, a call that outlives it
        ends the run (see watchdog.py)."""
        if "Timeout" not in config:
            return contextlib.nullcontext()
        timeout, start = float(config["Timeout"]), time.time()

        def expired() -> None:
            error = self.runtime.overdue_kernel_text(kernel, timeout)
            self.log(error, "ERROR")
            self.runtime.kernel_stuck({"error": error,
                                       "task": self.record("error", start, error)})
        return WATCHDOG.watch(timeout, expired)

    def _expanded_config(self, task_type: TaskType) -> dict:
        """The Config with its references replaced, each key checked against its type
        again (a value from a reference was not known at validation). Shell keys stay
        as written: their references become variables (see script/shell.py)."""
        runtime = self.runtime
        config = {}
        for key, value in self.spec.config.items():
            if key in task_type.shell_keys:
                config[key] = value
            else:
                config[key] = expand(value, runtime.expansion_values, runtime.builtins)
                check_expanded(key, value, config[key], task_type.keys)
        return config

    def log(self, text: str, severity: str = "INFO", echo: bool = False) -> None:
        self.lines.append((time.time(), severity, text))
        if echo or self.runtime.info.verbose:
            self.runtime.echo(text, severity)


    def publish(self, key: str, value: Any) -> None:
        self.runtime.publish(key, value)
        self.log(f"published {key} = {_short(value)}")

    def targets(self, target: str | int | None) -> tuple[int, ...]:
        plan = self.runtime.info.plan
        if target is None:
            others = [name for name in self.runtime.info.script.roles if name != self.spec.role]
            if len(others) != 1:
                raise TaskFailed("From is needed: there is more than one other role")
            target = others[0]
        try:
            return plan.resolve(target)
        except ValueError as error:
            raise TaskFailed(str(error)) from None

    def timeout(self, config: dict) -> float:
        """The task's own Timeout, else the run's default (script Timeout or --timeout)."""
        return float(config.get("Timeout", self.runtime.info.timeout))

    def readable_path(self, text: str, any_folder: bool) -> Path:
        """A path under the script's folder or the run's temp folder (unless AnyFolder)."""
        path = Path(text)
        if not path.is_absolute():
            path = self.runtime.script_folder / path
        path = path.resolve()
        allowed = (self.runtime.script_folder, self.runtime.info.temp_root.resolve())
        if not any_folder and not any(path.is_relative_to(folder) for folder in allowed):
            raise TaskFailed(f"{path} is outside the script's folder and the run's temp folder;"
                             " set AnyFolder: true to read it")
        return path

    def keep_file(self, path: Path, name: str, data: np.ndarray) -> None:
        """Send a kept file's bytes to rank 0 for the results file."""
        self.runtime.emit("file", {"role": self.spec.role, "index": self.spec.index,
                                   "name": name, "source": str(path), "data": data})
        self.log(f"kept file {name} ({data.size} bytes)")


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{value.shape} {value.dtype}"
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."
