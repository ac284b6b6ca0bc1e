"""Rank 1 sends rank 2 a milestone before rank 0 sends the start message (MPI orders
messages per sender only). Rank 2 must get the start message from `broadcast` and the
milestone afterwards from `receive`, and print what it saw."""

import time

from mpi4py import MPI

from distx.engine.transport import Kind, MPITransport

transport = MPITransport(MPI.COMM_WORLD)
if transport.rank == 0:
    time.sleep(0.5)
    transport.broadcast("verdict")
elif transport.rank == 1:
    transport.send(2, Kind.MILESTONE, ("Init", 0.0, ""))
    transport.broadcast(None)
else:
    verdict = transport.broadcast(None)
    held = transport.receive(timeout=5)
    print(verdict, held.kind.name, held.source, held.body[0], flush=True)
transport.close()
