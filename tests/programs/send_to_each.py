"""Rank 0 sends one body, with a large array sent after the header, to ranks 1 and 2 at
once; each sends it back. Rank 0 prints whether both came back equal and how often the
body was pickled for them (once)."""

import numpy as np
from mpi4py import MPI

from distx.engine.transport import IN_BAND_BYTES, Kind, MPITransport

pickled = 0


class Counted:
    """Counts its own pickling on the rank that sends it."""

    def __reduce__(self):
        global pickled
        pickled += 1
        return Counted, ()


transport = MPITransport(MPI.COMM_WORLD)
large = np.arange(IN_BAND_BYTES // 8 * 3.0)
if transport.rank == 0:
    transport.send_to_each([1, 2], Kind.VALUE_REPLY, {"large": large, "counted": Counted()})
    echoes = [transport.receive(timeout=30).body for _ in range(2)]
    equal = all(np.array_equal(echo["large"], large) for echo in echoes)
    print("equal" if equal else "differs", pickled, flush=True)
else:
    transport.send(0, Kind.VALUE_REPLY, transport.receive(timeout=30).body)
transport.close()
