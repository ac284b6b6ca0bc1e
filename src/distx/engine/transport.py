"""Tagged point-to-point messages between ranks, over MPI or inside one process.

Every message is (kind, body), as `protocol.py` defines them. The kind is the MPI tag (one
tag per kind; MPI guarantees tags only up to 32767, so task ids travel in the body, never in
the tag). The body is pickled with protocol 5 and its numpy arrays of IN_BAND_BYTES or more
are taken out of band: they travel after the small header as raw buffers with the
upper-case `Isend`/`Recv`, in chunks well below MPI's 2^31 count limit, so a large array is
never pickled and any size works.

A rank waiting for a message first polls for SPIN_SECONDS, yielding the CPU after every
`improbe` (a reply usually comes within microseconds, and `sleep` cannot wait less than
about 50 us), then sleeps with exponential backoff (1 us doubling to 1 ms, as
mpi4py.futures does), so 8 ranks on 2 cores leave the CPU to the ranks that compute. A rank
that has received nothing for IDLE_SECONDS (it only waits: for a milestone, a long kernel
elsewhere, the end of the run) does not spin and polls every IDLE_PAUSE, so a waiting rank
costs about 0.3 % of a core instead of 3 % (each wake-up costs tens of microseconds of
CPU); its first message after such a silence may be noticed up to IDLE_PAUSE late, and
ends the idle mode, so exchanges in progress keep their microsecond latency. While a large
send of its own is still in flight it keeps polling (yielding) for up to PROGRESS_SECONDS,
because MPI moves a large message only while the sender calls into it.

Under Open MPI with ULFM (`mpirun --with-ft ulfm`, see `fault_tolerant`) the transport is
the one place that learns that a peer died: MPI calls return errors instead of ending the
job, and an MPI_ERR_PROC_FAILED from any call (a probe, a send, completing a send) makes it
acknowledge the failure and hand the rank's next `receive` a PEER_LOST message from the
dead rank, once per rank; the rank core turns that into the rank's Errored milestone.
Afterwards sends to a dead rank are dropped and its late messages ignored; live peers keep
talking on the same communicator (ULFM keeps point-to-point between live ranks working).
The normal path gains no work but a set lookup per send and per message received.

Rows that holders exchange at every step of Run.Iterate (halo rows) skip all of the above:
`exchange_rows` moves them as raw buffers with `Isend`/`Irecv` on a second communicator,
made once with the transport (a duplicate of the first), where the transport's probe for
tagged messages never sees them. The caller polls the returned `RowExchange`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from distx.engine.protocol import Kind, PeerLost
from distx.lazy import numpy as np
from distx.vocabulary import ExitCode

CHUNK_BYTES = 1 << 30
IN_BAND_BYTES = 1 << 16
"""Arrays smaller than this travel inside the pickled header: a message of its own costs
more than the copy (a sweep's result columns: one MPI message instead of six)."""
_FIRST_PAUSE = 1e-6
_LONGEST_PAUSE = 1e-3
SPIN_SECONDS = 2e-4
IDLE_SECONDS = 1.0
IDLE_PAUSE = 5e-2
ABORT_OUTPUT_SECONDS = 0.5
ABORT_EXIT_SECONDS = 10.0
PROGRESS_SECONDS = 2.0
KIND_OF_TAG = {kind.value: kind for kind in Kind}
"""The kind of a received tag: `Kind(tag)` (the enum's own lookup) cost a few microseconds
of the ~15 that a milestone takes from one rank to the other."""


@dataclass
class Message:
    source: int
    kind: Kind
    body: Any


class Transport(ABC):
    """What a rank needs from the world: who it is, send, receive.

    The start-up collectives (broadcast, gather, broadcast_array) are MPITransport's own:
    a single-process run shares its script and arrays directly.
    """

    rank: int
    size: int

    @abstractmethod
    def send(self, dest: int, kind: Kind, body: Any) -> None:
        """Queue `body` for `dest` without blocking."""

    @abstractmethod
    def receive(self, timeout: float | None) -> Message | None:
        """The next message for this rank, or None when `timeout` seconds pass first."""

    @abstractmethod
    def close(self, until: float | None = None) -> bool:
        """Complete this rank's sends and meet every rank; after it the rank may exit.
        False if that did not happen by `until` (a time.monotonic() deadline)."""

    def send_to_each(self, dests: Iterable[int], kind: Kind, body: Any) -> None:
        """The same `body` to every rank of `dests`."""
        for dest in dests:
            self.send(dest, kind, body)

    def send_from_thread(self, dest: int, kind: Kind, body: Any) -> None:
        """Send a small body from a thread other than the one serving this rank."""
        self.send(dest, kind, body)

    @abstractmethod
    def abort(self, exit_code: int) -> None:
        """End every rank of the run now, with `exit_code` (a rank is stuck)."""


def fault_tolerant(library_version: str, environment: Mapping[str, str]) -> bool:
    """True when this process runs under Open MPI with ULFM enabled (`mpirun --with-ft ulfm`,
    or the MCA parameter mpi_ft_enable, which the launcher passes on in the environment)."""
    return _ulfm_requested(environment) and "Open MPI" in library_version


def _ulfm_requested(environment: Mapping[str, str]) -> bool:
    return environment.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes")


ULFM_SETTINGS = {
    "OMPI_MCA_async_mpi_finalize": "1",
    "OMPI_MCA_btl_tcp_flags": "send,inplace,need-ack,need-csum",
    "OMPI_MCA_mpi_preconnect_mpi": "1",
}
"""The MCA parameters a fault-tolerant run starts with (unless the user set them).

async_mpi_finalize=1 skips the PMIx fence of MPI_Finalize: that fence includes the dead
ranks and was seen to hang now and then (3 runs in 14 here) after a rank died; the
survivors have met already, in the agreement that ends the run and in ULFM's own barrier
at the start of MPI_Finalize.

btl_tcp_flags without `put` (the default is send,put,inplace,need-ack,need-csum,
hetero-rdma) makes ob1 send large messages as pipelined fragments instead of by emulated
RDMA put. With put, a worker killed while rank 0 sent it its row partition deadlocked
rank 0 inside Open MPI 5.0 (py-spy: PMPI_Test -> mca_btl_tcp_frag_send fails ->
mca_btl_tcp_endpoint_close -> ob1's error callback -> mca_pml_ob1_send_fin ->
mca_btl_tcp_endpoint_send -> pthread_mutex_lock on the lock it already holds) in 4 of 17
runs killed 0-0.05 s after the results file appeared; without put, 0 of 27 (the same
kill moments among them).

mpi_preconnect_mpi=1 opens every rank's connections to every other at MPI_Init instead
of at its first message to each. A worker whose first message to a rank (a milestone of
its start-up) found that rank just killed crashed inside Open MPI 5.0 (SIGSEGV in
mca_pml_ob1_isend, so the run lost a second rank): 2 of 7 runs with a worker killed
0.01 s after the results file appeared, and 4 of 32 runs of the test that kills one while
rank 0 sends its partition; 0 of 24 preconnected. The cost is a connection per pair of
ranks at start-up."""


def prepare_fault_tolerance(environment: MutableMapping[str, str]) -> bool:
    """Before MPI starts, under ULFM: set ULFM_SETTINGS that the user did not set.
    True if any was set."""
    if not _ulfm_requested(environment):
        return False
    missing = {name: value for name, value in ULFM_SETTINGS.items()
               if name not in environment}
    environment.update(missing)
    return bool(missing)


FAILURE_CLASSES = ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
"""The MPI error classes (ULFM) that mean a peer died."""


class MPITransport(Transport):
    def __init__(self, comm: Any, fault_tolerant: bool = False) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.fault_tolerant = fault_tolerant
        self.dead: set[int] = set()           # peers known to have died (ULFM only)
        self._lost: deque[int] = deque()       # dead peers not yet reported by receive
        self._failure_classes: set[int] = set()
        self._agreed: np.ndarray | None = None  # the flag of the closing agreement (ULFM)
        if fault_tolerant:
            comm.Set_errhandler(MPI.ERRORS_RETURN)
            self._failure_classes = {getattr(MPI, name) for name in FAILURE_CLASSES}
        self.rows_comm = comm.Dup()  # for exchange_rows only (it keeps the error handler)
        self._pending: list[tuple[Any, Any]] = []
        self._sending_since: float | None = None  # when the oldest large send was posted
        self._held: deque[Message] = deque()       # arrived before this rank was ready
        self._last_arrival = time.monotonic()      # when a message last came in
        self._status = MPI.Status()                # of the message receive probed

    def send(self, dest: int, kind: Kind, body: Any) -> None:
        self.send_to_each((dest,), kind, body)

    def send_to_each(self, dests: Iterable[int], kind: Kind, body: Any) -> None:
        """Pickled once for all of `dests`: the start-up message took rank 0 9 ms a rank
        (0.57 s for 63), a sweep's plan 1-6 ms."""
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(body, protocol=5, buffer_callback=lambda buffer: (
            buffer.raw().nbytes < IN_BAND_BYTES or buffers.append(buffer)))
        raws = [buffer.raw() for buffer in buffers]
        sizes = [raw.nbytes for raw in raws]
        for dest in dests:
            if dest in self.dead:
                continue
            try:
                self._pending.append((self.comm.isend((header, sizes), dest=dest, tag=kind),
                                      None))
                for raw in raws:
                    self._send_raw(raw, dest)
            except self._mpi.Exception as error:
                self._peer_failed(error)
            if len(self._pending) > 64:
                self._complete_sends()

    def _send_raw(self, raw: memoryview, dest: int) -> None:
        for start in range(0, raw.nbytes, CHUNK_BYTES):
            chunk = raw[start:start + CHUNK_BYTES]
            request = self.comm.Isend([chunk, self._mpi.BYTE], dest=dest, tag=Kind.PAYLOAD)
            self._pending.append((request, raw))
            if self._sending_since is None:
                self._sending_since = time.monotonic()

    def receive(self, timeout: float | None) -> Message | None:
        if self._held:
            return self._held.popleft()
        status = self._status
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        idle = began - self._last_arrival > IDLE_SECONDS
        pause, longest = (IDLE_PAUSE, IDLE_PAUSE) if idle else (_FIRST_PAUSE, _LONGEST_PAUSE)
        spin = 0.0 if idle else SPIN_SECONDS
        while True:
            if self._lost:
                lost = self._lost.popleft()
                return Message(lost, Kind.PEER_LOST, PeerLost(lost))
            try:
                probed = self.comm.improbe(self._mpi.ANY_SOURCE, self._mpi.ANY_TAG, status)
            except self._mpi.Exception as error:
                self._peer_failed(error)
                continue
            if probed is not None:
                message = self._take(probed, status)
                if message is not None:
                    return message
                continue
            sending = self._complete_sends()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if now - began < spin or (sending and
                                      now - self._sending_since < PROGRESS_SECONDS):
                os.sched_yield()
                continue
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 2, longest)

    def _take(self, probed: Any, status: Any) -> Message | None:
        """Receive the probed message; None if its sender is dead (it is dropped)."""
        self._last_arrival = time.monotonic()
        source, tag = status.Get_source(), status.Get_tag()
        try:
            if tag == Kind.PAYLOAD:  # of a message dropped when its sender died (ULFM)
                probed.Recv([np.empty(status.Get_count(self._mpi.BYTE), np.uint8),
                             self._mpi.BYTE])
                return None
            header, sizes = probed.recv()
            buffers = [self._receive_raw(source, size) for size in sizes]
        except self._mpi.Exception as error:
            self._peer_failed(error)
            return None
        if source in self.dead:
            return None
        return Message(source, KIND_OF_TAG[tag], pickle.loads(header, buffers=buffers))

    def _peer_failed(self, error: Exception) -> None:
        """An MPI call failed: note newly dead peers (ULFM), or re-raise any other error."""
        if error.Get_error_class() not in self._failure_classes:
            raise error
        failed = self.comm.Get_failed()
        ranks = self._mpi.Group.Translate_ranks(failed, list(range(failed.Get_size())),
                                                self.comm.Get_group())
        failed.Free()
        self.comm.Ack_failed()
        if 0 in ranks and self.rank != 0:
            self._coordinator_died()
        for rank in ranks:
            if rank not in self.dead:
                self.dead.add(rank)
                self._lost.append(rank)

    def _coordinator_died(self) -> None:
        """Rank 0, the results file's only writer, died: no run goes on without it (the
        file keeps what its journal holds; --resume continues). End the job, as without
        ULFM, wherever this rank waits (also before its rank core exists)."""
        line = (f"[rank {self.rank}] ERROR: rank 0 died; ending the job "
                "(--resume continues the run)\n")
        os.write(sys.stderr.fileno(), line.encode())
        self.abort(ExitCode.FAILED)

    def exchange_rows(self, sends: list[tuple[int, np.ndarray]],
                      receives: list[tuple[int, np.ndarray]], tag: int) -> RowExchange:
        """Start sending each C-contiguous array of `sends` to its rank and receiving into
        each C-contiguous array of `receives` from its rank, as raw bytes on `rows_comm`
        (tagged `tag`, in chunks of CHUNK_BYTES); poll the result until it is `done`.

        The arrays must stay untouched until then. A peer that already died gets nothing.
        """
        exchange = RowExchange(self)
        try:
            for rank, array in sends:
                if rank not in self.dead:
                    exchange.sends += [self.rows_comm.Isend([chunk, self._mpi.BYTE], rank, tag)
                                       for chunk in _chunks(array)]
            for rank, array in receives:
                exchange.receives += [self.rows_comm.Irecv([chunk, self._mpi.BYTE], rank, tag)
                                      for chunk in _chunks(array)]
        except self._mpi.Exception as error:
            exchange.failed(error)
        return exchange

    def send_from_thread(self, dest: int, kind: Kind, body: Any) -> None:
        """A blocking send that leaves the pending list alone (the serving thread owns it);
        a small body goes out eagerly, so it returns at once."""
        self.comm.send((pickle.dumps(body, protocol=5), []), dest=dest, tag=kind)

    def abort(self, exit_code: int) -> None:
        """End the job, after giving the launcher time to forward what this rank printed:
        MPI_Abort tears the launcher's proxies down too, and the one line that says why
        (a full disk, a stuck kernel) was sometimes lost with them."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_OUTPUT_SECONDS)
        # MPI_Abort once never returned under Open MPI with ULFM after rank 0 had died
        # (a loaded machine; the job hung for minutes): this process then ends itself.
        threading.Timer(ABORT_EXIT_SECONDS, os._exit, (exit_code,)).start()
        self.comm.Abort(exit_code)

    def _receive_raw(self, source: int, size: int) -> np.ndarray:
        buffer = np.empty(size, dtype=np.uint8)
        for start in range(0, size, CHUNK_BYTES):
            chunk = buffer[start:start + CHUNK_BYTES]
            self.comm.Recv([chunk, self._mpi.BYTE], source=source, tag=Kind.PAYLOAD)
        return buffer

    def _complete_sends(self) -> bool:
        """Drop completed sends; True while a raw buffer (a large send) is still going."""
        try:
            self._pending = [(request, keep) for request, keep in self._pending
                             if not request.Test()]
        except self._mpi.Exception as error:  # a send to a peer that died (ULFM)
            self._peer_failed(error)
            self._pending = [(request, keep) for request, keep in self._pending
                             if not self._completed_or_failed(request)]
        sending = any(keep is not None for _, keep in self._pending)
        if not sending:
            self._sending_since = None
        return sending

    def _completed_or_failed(self, request: Any) -> bool:
        try:
            return request.Test()
        except self._mpi.Exception as error:
            self._peer_failed(error)
            return True

    def broadcast(self, obj: Any, dispatch: Callable[[Message], None] | None = None) -> Any:
        """At start-up: rank 0's `obj` on every rank; other messages go to `dispatch`.

        Point-to-point rather than MPI's bcast: ranks waiting while rank 0 checks the
        script or makes the data (seconds, maybe) sleep instead of spinning in MPI."""
        if self.rank == 0:
            self.send_to_each(range(1, self.size), Kind.START, obj)
            return obj
        early: list[Message] = []
        while True:
            message = self.receive(timeout=None)
            if message.kind == Kind.START:
                self._held.extend(early)
                return message.body
            # MPI orders messages per sender only: a faster rank's milestone can come
            # before rank 0's start message. Without a rank core yet, keep it for later.
            if dispatch is None:
                early.append(message)
            else:
                dispatch(message)

    def broadcast_array(self, array: np.ndarray) -> np.ndarray:
        """Collective at start-up: fill `array` on every rank from rank 0's.

        Fault-tolerant runs send it point-to-point from rank 0: a collective in which a
        rank dies can leave the others inconsistent; point-to-point from the rank that
        cannot die (rank 0, the only writer) cannot."""
        flat = array.reshape(-1).view(np.uint8)
        if self.fault_tolerant:
            if self.rank == 0:
                for dest in range(1, self.size):
                    try:
                        if dest not in self.dead:
                            self._send_raw(flat, dest)
                    except self._mpi.Exception as error:
                        self._peer_failed(error)
            else:
                flat[:] = self._receive_raw(0, flat.nbytes)
            return array
        for start in range(0, flat.nbytes, CHUNK_BYTES):
            self.comm.Bcast([flat[start:start + CHUNK_BYTES], self._mpi.BYTE], root=0)
        return array

    def gather(self, obj: Any) -> list | None:
        """Collective at start-up: every rank's `obj` on rank 0, None elsewhere."""
        return self.comm.gather(obj, root=0)

    def close(self, until: float | None = None) -> bool:
        """Finish own sends while draining late arrivals, then a non-blocking barrier.

        A rank may still owe a reply to a rank that stopped waiting for it; every rank
        keeps receiving (and dropping) until all ranks are in the barrier, so no send is
        left unmatched and no rank exits while another still sends to it.
        """
        def in_time() -> bool:
            return until is None or time.monotonic() < until

        while self._pending and in_time():
            self.receive(timeout=0.001)
        barrier = self._meeting()
        pause = _FIRST_PAUSE
        while not self._met(barrier):
            if not in_time():
                return False
            self._drop_rows()
            if self.receive(timeout=0) is None:
                time.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)
        return True

    def _drop_rows(self) -> None:
        """Receive and drop rows sent to this rank that it no longer waits for (a
        Run.Iterate that ended early), so that their senders' requests complete."""
        status = self._mpi.Status()
        try:
            while (probed := self.rows_comm.improbe(self._mpi.ANY_SOURCE, self._mpi.ANY_TAG,
                                                    status)) is not None:
                probed.Recv([np.empty(status.Get_count(self._mpi.BYTE), np.uint8),
                             self._mpi.BYTE])
        except self._mpi.Exception as error:
            self._peer_failed(error)

    def _meeting(self) -> Any:
        """The non-blocking meeting of every rank that ends a run: a barrier, or under ULFM
        an agreement, which completes among the survivors when ranks have died."""
        if not self.fault_tolerant:
            return self.comm.Ibarrier()
        self.comm.Ack_failed()
        self._agreed = np.ones(1, dtype=np.intc)  # the flag lives while the agreement runs
        return self.comm.Iagree(self._agreed)

    def _met(self, meeting: Any) -> Any:
        try:
            return meeting.Test()
        except self._mpi.Exception as error:  # a rank died during the agreement: again
            self._peer_failed(error)
            return self._met(self._meeting())


class RowExchange:
    """The requests of one `MPITransport.exchange_rows`, polled until all are complete."""

    def __init__(self, transport: MPITransport) -> None:
        self.transport = transport
        self.sends: list[Any] = []
        self.receives: list[Any] = []
        self.broken = False   # a peer died during the exchange: it will never complete

    def done(self) -> bool:
        if self.broken:
            return False
        try:
            self.sends = [request for request in self.sends if not request.Test()]
            self.receives = [request for request in self.receives if not request.Test()]
        except self.transport._mpi.Exception as error:
            self.failed(error)
            return False
        return not self.sends and not self.receives

    def failed(self, error: Exception) -> None:
        """An MPI call of the exchange failed: the transport learns of a dead peer (ULFM,
        and the rank core then of its Errored milestone) or re-raises any other error."""
        self.broken = True
        self.transport._peer_failed(error)

    def cancel(self) -> None:
        """Give up (the wait failed): cancel the receives not done. Sends that nobody
        receives are taken and dropped by their peer when it closes its transport."""
        for request in self.receives:
            with contextlib.suppress(self.transport._mpi.Exception):
                request.Cancel()
                request.Test()
        self.receives = []


def _chunks(array: np.ndarray) -> list[np.ndarray]:
    """A C-contiguous array's bytes in pieces below MPI's 2^31 count limit (one empty
    piece for an empty array, so that sender and receiver still meet)."""
    raw = array.reshape(-1).view(np.uint8)
    return [raw[start:start + CHUNK_BYTES] for start in range(0, max(raw.nbytes, 1),
                                                               CHUNK_BYTES)]


class LocalHub:
    """The in-process world of a single-process run: one inbox per virtual rank."""

    def __init__(self, size: int) -> None:
        self.inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(size)]
        self.threads: list[threading.Thread] = []  # of the virtual ranks other than 0

    def transport(self, rank: int) -> LocalTransport:
        return LocalTransport(self, rank)


class LocalTransport(Transport):
    """Virtual ranks as threads of one process. Bodies are copied as MPI would copy them."""

    def __init__(self, hub: LocalHub, rank: int) -> None:
        self.hub = hub
        self.rank = rank
        self.size = len(hub.inboxes)

    def send(self, dest: int, kind: Kind, body: Any) -> None:
        copied = pickle.loads(pickle.dumps(body, protocol=5))
        self.hub.inboxes[dest].put(Message(self.rank, kind, copied))

    def receive(self, timeout: float | None) -> Message | None:
        try:
            return self.hub.inboxes[self.rank].get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self, until: float | None = None) -> bool:
        """Rank 0 waits for the threads of the other virtual ranks to end."""
        if self.rank != 0:
            return True
        for thread in self.hub.threads:
            thread.join(None if until is None else max(0.0, until - time.monotonic()))
        return not any(thread.is_alive() for thread in self.hub.threads)

    def abort(self, exit_code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
