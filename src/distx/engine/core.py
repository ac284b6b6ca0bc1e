"""The rank core: serving messages, waits, milestones, values and control, nothing else.

Whenever a rank waits (for a milestone, a value, a process, a halo, sweep results, the end
of the run) it serves the messages addressed to it through `handlers`, one per message
kind. The core handles milestones, value requests/replies and control itself; features
(the sweep's holder and scheduler sides, the halo mailbox, rank 0's recording of events)
`register` their own handlers. A milestone is sent to every rank the moment it is reached,
so a waiter wakes on the message, not on a poll.

Milestones: Init (rank ready), PreRun (data distribution), Run (sequence starts), PostRun
(sequence done), then exactly one of Finished / Cancelled / Errored. A terminal milestone
carries its cause, so a rank waiting on an Errored peer fails at once, naming it.

A peer that dies (noticed by the transport under ULFM, a PEER_LOST message) reaches
Errored with the cause "rank N on host H died" as if it had sent it: waits on it fail at
once, rank 0 records the milestone, and features told through `on_lost` (the sweep)
react. A rank lost after its terminal milestone keeps that state for the run's outcome.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distx.engine.output import real_stderr
from distx.engine.progress import break_live_line
from distx.engine.protocol import (
    Command,
    Control,
    Event,
    EventKind,
    Kind,
    Milestone,
    PeerLost,
    ValueReply,
    ValueRequest,
)
from distx.engine.transport import Message, Transport
from distx.errors import Cancelled, TaskFailed
from distx.script.model import Script
from distx.script.roles import RolePlan
from distx.vocabulary import TERMINAL, RunState

SERVE_SLICE = 0.05
"""Longest single wait for a message, so that cancel, signals and deadlines are seen."""

Handler = Callable[[int, Any], None]
"""Handles one message: (source rank, body)."""


@dataclass(frozen=True)
class RunInfo:
    """What every rank knows about the run, identical on all ranks but `kernels_folder`:
    where this process imports kernel modules from, the script's kernels folder (None) on
    rank 0 and in a single process, the shipped copy (engine/shipping.py) on other ranks."""

    script: Script
    plan: RolePlan
    run_id: str
    timeout: float
    overrides: dict
    hosts: tuple[str, ...]
    temp_root: Path
    verbose: bool = False
    grace: float = 30.0
    progress: str = "auto"    # how rank 0 shows sweep progress (engine/progress.py)
    kernels_folder: Path | None = None


def drop_late(source: int, body: Any) -> None:
    """The handler of a reply that may come after the feature that asked stopped waiting
    for it (results of a stopped sweep, ids of a cancelled round): it is dropped."""


class RankCore:
    def __init__(self, transport: Transport, info: RunInfo) -> None:
        self.transport = transport
        self.info = info
        self.rank = transport.rank
        self.role = info.plan.role_of[self.rank]
        self.values: dict[str, Any] = {}
        self.milestones: dict[int, dict[str, float]] = {r: {} for r in range(info.plan.size)}
        self.terminal: dict[int, tuple[str, str]] = {}   # rank -> (state, cause)
        self.lost: dict[int, str] = {}                  # dead rank -> "rank N on host H died"
        self.on_lost: list[Callable[[int], None]] = []  # told of each dead rank, once
        self.pending_requests: list[tuple[int, ValueRequest]] = []
        self.replies: dict[int, tuple[ValueReply, int]] = {}  # request id -> (reply, source)
        self.request_ids = itertools.count()
        self.sequence_done = False
        self.cancel_requested = False
        self.stop_requested = False    # rank 0: stop gracefully (a signal reached some rank)
        self.stop_deadline: float | None = None  # rank 0: when that stop's grace period ends
        self.on_stop: list[Callable[[], None]] = []  # rank 0: told once, when a stop begins
        self.signalled = False         # this process got SIGTERM/SIGINT/SIGUSR1
        self._stop_forwarded = False
        self.exit_code: int | None = None
        self.after_serving: list[Callable[[], None]] = []  # e.g. rank 0 flushes its file
        self.before_abort: list[Callable[[], None]] = []   # rank 0 closes its file
        self.handlers: dict[Kind, Handler] = {}
        self.register(Kind.MILESTONE, self.on_milestone)
        self.register(Kind.VALUE_REQUEST, self.on_value_request)
        self.register(Kind.VALUE_REPLY, self.on_value_reply)
        self.register(Kind.CONTROL, self.on_control)
        self.register(Kind.PEER_LOST, self.on_peer_lost)

    def register(self, kind: Kind, handler: Handler) -> None:
        """Let `handler` take every message of `kind` (replacing any before it)."""
        self.handlers[kind] = handler

    def describe(self, rank: int) -> str:
        return self.info.plan.describe(rank)

    def echo(self, text: str, severity: str) -> None:
        """A line on stderr naming this rank; never taken by a capture of kernel output
        (the watchdog echoes while a kernel's output is being captured)."""
        line = f"[{self.describe(self.rank)}] {severity}: {text}\n"
        break_live_line()
        sys.stderr.flush()
        os.write(real_stderr(), line.encode(errors="replace"))

    # ----- serving --------------------------------------------------------------------
    def on_signal(self) -> None:
        """From a signal handler: set a flag, which serving forwards to rank 0. Rank 0
        starts the grace period at once: the handler runs even while this thread is in
        a Python kernel, when nothing serves."""
        self.signalled = True
        if self.rank == 0:
            self.request_stop()

    def request_stop(self) -> None:
        """Rank 0: stop gracefully, within the grace period that starts now."""
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.info.grace
            for hook in self.on_stop:
                hook()
        self.stop_requested = True

    def past_grace(self) -> bool:
        """True once a stop's grace period is over."""
        return self.stop_deadline is not None and time.monotonic() >= self.stop_deadline

    def _forward_signal(self) -> None:
        """Once, after a signal: rank 0 stops; another rank asks rank 0 to."""
        if not self.signalled or self._stop_forwarded:
            return
        self._stop_forwarded = True
        if self.rank == 0:
            self.request_stop()
        else:
            self.transport.send(0, Kind.CONTROL, Control(Command.STOP))

    def serve_once(self, timeout: float | None) -> bool:
        self._forward_signal()
        message = self.transport.receive(timeout)
        if message is not None:
            self.dispatch(message)
        for hook in self.after_serving:
            hook()
        return message is not None

    def dispatch(self, message: Message) -> None:
        self.deliver(message.source, message.kind, message.body)

    def deliver(self, source: int, kind: Kind, body: Any) -> None:
        """Handle a message as if it came from `source` (also this rank's own ones)."""
        handler = self.handlers.get(kind)
        if handler is None:
            raise RuntimeError(f"rank {self.rank} got unexpected {kind.name} "
                               f"from rank {source}")
        handler(source, body)

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
            self.serve_once(SERVE_SLICE if remaining is None else min(remaining, SERVE_SLICE))

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.check_cancel("during Run.Delay")
            self.serve_once(min(end - time.monotonic(), SERVE_SLICE))

    def serve_until_shutdown(self) -> None:
        while self.exit_code is None:
            self.serve_once(SERVE_SLICE)

    # ----- milestones -----------------------------------------------------------------
    def reach(self, name: str, detail: str = "") -> None:
        milestone = Milestone(name, time.time(), detail)
        for rank in range(self.info.plan.size):
            if rank != self.rank:
                self.transport.send(rank, Kind.MILESTONE, milestone)
        self.deliver(self.rank, Kind.MILESTONE, milestone)

    def on_milestone(self, source: int, milestone: Milestone) -> None:
        self.milestones[source][milestone.name] = milestone.when
        if milestone.name in TERMINAL and source not in self.terminal:
            self.terminal[source] = (milestone.name, milestone.detail)

    def on_peer_lost(self, _: int, lost: PeerLost) -> None:
        """The transport found `lost.rank` dead: it reaches Errored with the cause."""
        cause = f"rank {lost.rank} on host {self.info.hosts[lost.rank]} died"
        self.lost[lost.rank] = cause
        if self.rank == 0:
            self.echo(f"{self.describe(lost.rank)} lost: {cause}", "ERROR")
        self.deliver(lost.rank, Kind.MILESTONE,
                     Milestone(RunState.ERRORED.value, time.time(), cause))
        for listener in self.on_lost:
            listener(lost.rank)

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
        self.emit(EventKind.VALUE, {"role": self.role, "key": key, "value": value,
                                    "time": time.time()})
        still_waiting = []
        for source, request in self.pending_requests:
            if request.key == key:
                self.transport.send(source, Kind.VALUE_REPLY,
                                    ValueReply(request.request_id, True, value))
            else:
                still_waiting.append((source, request))
        self.pending_requests = still_waiting

    def on_value_request(self, source: int, request: ValueRequest) -> None:
        if request.key in self.values:
            reply = ValueReply(request.request_id, True, self.values[request.key])
        elif self.sequence_done:
            reply = ValueReply(request.request_id, False, "it finished its sequence without "
                               f"publishing '{request.key}'")
        else:
            self.pending_requests.append((source, request))
            return
        self.transport.send(source, Kind.VALUE_REPLY, reply)

    def on_value_reply(self, source: int, reply: ValueReply) -> None:
        self.replies[reply.request_id] = (reply, source)

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
                self.transport.send(rank, Kind.VALUE_REQUEST, ValueRequest(request_id, key))

        def answered() -> bool:
            for rank, request_id in asked.items():
                if request_id in self.replies:
                    reply, _ = self.replies[request_id]
                    if not reply.found:
                        raise TaskFailed(f"{self.describe(rank)} cannot give '{key}': "
                                         f"{reply.value}")
                elif rank in self.lost:
                    raise TaskFailed(f"{self.describe(rank)} died before giving '{key}': "
                                     f"{self.lost[rank]}")
                elif self.terminal.get(rank, ("",))[0] in (RunState.ERRORED,
                                                            RunState.CANCELLED):
                    self._fail_if_terminal(rank, f"before publishing '{key}'")
            return all(request_id in self.replies for request_id in asked.values())
        try:
            self.wait_until(answered, timeout, f"value '{key}' from "
                            + ", ".join(self.describe(rank) for rank in asked))
            return [self.values[key] if rank == self.rank
                    else self.replies[asked[rank]][0].value for rank in ranks]
        finally:
            for request_id in asked.values():
                self.replies.pop(request_id, None)

    def end_sequence(self, state: RunState, detail: str) -> str:
        """Reach the terminal milestone `state`; requests still waiting will never be met."""
        self.sequence_done = True
        for source, request in self.pending_requests:
            self.transport.send(source, Kind.VALUE_REPLY, ValueReply(
                request.request_id, False, f"it reached {state.value} without publishing "
                f"'{request.key}'" + (f" ({detail})" if detail else "")))
        self.pending_requests = []
        self.reach(state.value, detail)
        return state.value

    # ----- control and events ------------------------------------------------------------
    def on_control(self, source: int, control: Control) -> None:
        if control.command == Command.CANCEL:
            self.cancel_requested = True
        elif control.command == Command.STOP:
            self.request_stop()
        elif control.command == Command.SHUTDOWN:
            self.exit_code = control.exit_code

    def send_control(self, ranks: list[int] | range, control: Control) -> None:
        for rank in ranks:
            self.transport.send(rank, Kind.CONTROL, control)

    def emit(self, kind: EventKind, record: dict) -> None:
        """A record for the results file, to rank 0 (which records its own at once)."""
        event = Event(kind, record)
        if self.rank == 0:
            self.deliver(0, Kind.EVENT, event)
        else:
            self.transport.send(0, Kind.EVENT, event)
