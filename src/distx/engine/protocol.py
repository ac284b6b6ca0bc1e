"""The engine's wire protocol: every message kind between ranks and the body it carries.

A message is (kind, body): the kind is the MPI tag, the body one of the dataclasses below
(pickled by the transport). Both ends of each message use these names, so a reader finds
here who sends what to whom. The words that also reach the results file (run states,
milestones, statuses, exit codes) live in `distx.vocabulary`.
"""

from __future__ import annotations

import copyreg
import enum
from dataclasses import dataclass, field
from typing import Any

from distx.lazy import numpy as np
from distx.results.arrays import ArrayBlock


class Kind(enum.IntEnum):
    """Message kinds; the value is the MPI tag (MPI guarantees tags up to 32767 only)."""

    MILESTONE = 1        # every rank -> every rank: Milestone
    VALUE_REQUEST = 2    # any rank -> the publisher: ValueRequest
    VALUE_REPLY = 3      # publisher -> asker: ValueReply
    EVENT = 4            # any rank -> rank 0: Event, a record for the results file
    SWEEP_START = 5      # rank 0 -> holders: SweepPlan
    SWEEP_READY = 6      # holder -> rank 0: SweepReady
    SWEEP_TASKS = 7      # rank 0 -> holder: SweepTasks
    SWEEP_RESULTS = 8    # holder -> rank 0: BatchResult
    CONTROL = 9          # rank 0 -> every rank: Control (another rank -> rank 0: STOP)
    HALO = 10            # holder -> neighbour holder: HaloRows
    DATA = 11            # rank 0 -> holder at start: DataBlock
    START = 12           # rank 0 -> every rank at start: numba or not, Verdict, data layout
    PEER_LOST = 13       # the transport, to its own rank: PeerLost (never sent; ULFM only)
    ADOPT = 14           # rank 0 -> holder: Adoption, a dead holder's row partitions
    IDS_REQUEST = 15     # rank 0 -> holder before a large sweep: IdsRequest
    IDS_REPLY = 16       # holder -> rank 0: IdsReply
    PAYLOAD = 100        # raw out-of-band buffers following a header


@dataclass(frozen=True)
class Milestone:
    name: str
    when: float          # Unix seconds
    detail: str = ""     # the cause, for a terminal milestone


@dataclass(frozen=True)
class ValueRequest:
    request_id: int
    key: str


@dataclass(frozen=True)
class ValueReply:
    request_id: int
    found: bool
    value: Any           # the value if found, else why it never will be


class EventKind(str, enum.Enum):
    """What an Event record is for rank 0 to write."""

    VALUE = "value"      # a published value
    TASK = "task"        # a finished task, with its log
    FILE = "file"        # a file a task kept
    STUCK = "stuck"      # a rank lost in a kernel past its Timeout
    LOG = "log"          # log lines outside a task of the sequence (sweep kernel output)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    record: dict


class Command(str, enum.Enum):
    CANCEL = "cancel"      # end the sequence now: the run failed elsewhere
    STOP = "stop"          # a signal: stop gracefully (sent to rank 0 by the rank that got it)
    SHUTDOWN = "shutdown"  # the run is over: exit with `exit_code`


@dataclass(frozen=True)
class Control:
    command: Command
    exit_code: int | None = None


@dataclass(frozen=True)
class HaloRows:
    array: str
    step: int
    side: str            # "above" or "below", as the receiver sees it
    rows: np.ndarray


@dataclass(frozen=True)
class DataBlock:
    array: str
    offset: int          # of the block's first row in the whole array
    block: np.ndarray


@dataclass(frozen=True)
class PeerLost:
    rank: int            # the rank that died


@dataclass(frozen=True)
class Adoption:
    """A dead holder's row partition for a surviving holder to run its tasks on."""

    part: int                    # the partition's index among the holders
    blocks: list[DataBlock]      # one block of every row-partitioned array


@dataclass(frozen=True)
class IdsRequest:
    """Grid positions whose experiment ids rank 0 asks a holder for (engine/ids.py)."""

    number: int                  # of the request round
    positions: np.ndarray        # int64


@dataclass(frozen=True)
class IdsReply:
    number: int
    ids: np.ndarray              # S16, one per position, in order


@dataclass(frozen=True)
class Verdict:
    """Rank 0's word on the input: the parsed script to run and the kernel code it needs
    (engine/shipping.py), or the error ending every rank."""

    error: str | None
    script: Any = None
    run_id: str = ""
    hosts: list[str] = field(default_factory=list)
    kernels: Any = None


@dataclass
class SweepPlan:
    """What rank 0 tells the holders about a sweep (SWEEP_START).

    `todo` holds the grid indices of the experiments to run (all but those already done
    when resuming); a task id is `position in todo * parts + part`. Holders decode the
    keyfields from the grid index, so the message of a batch is a list of integers.
    """

    number: int
    kernel: str
    inputs: list[str]
    args: dict
    outputs: list[str]
    parts: int
    todo: np.ndarray
    timeout: float | None = None  # of one kernel call (see watchdog.py)


@dataclass(frozen=True)
class SweepReady:
    number: int
    error: str | None    # why the holder cannot run the kernel, or None


@dataclass(frozen=True)
class SweepTasks:
    number: int
    task_ids: np.ndarray  # int64


@dataclass
class BatchResult:
    """The results of one batch of tasks, as columns (SWEEP_RESULTS).

    A holder reads the clock once per task, after its call: a task's `end` is the next
    one's `start` (what the holder does between two calls counts in the earlier task).
    """

    number: int
    task_ids: np.ndarray                         # int64
    ok: np.ndarray                               # bool
    start: np.ndarray                            # float64, Unix seconds
    end: np.ndarray                              # the next task's start (see above)
    values: dict[str, np.ndarray]                # float64 per output; NaN if not a number
    arrays: dict[str, tuple[np.ndarray, ArrayBlock]]  # output -> (positions, their arrays)
    errors: dict[int, tuple[str, bool]]          # position -> (text, cannot compile?)
    seconds: float


FIRST_PRIVATE_EXTENSION = 240
"""copyreg's extension codes 240-255 are for private use."""
for _code, _body in enumerate((Milestone, ValueRequest, ValueReply, Control),
                              start=FIRST_PRIVATE_EXTENSION):
    # The bodies whose latency counts travel with a one-byte code for their class: the
    # unpickler then finds the class in copyreg's cache instead of importing its module
    # by name, which took about half of the 2-4 us a Milestone took to unpickle.
    copyreg.add_extension(__name__, _body.__qualname__, _code)

