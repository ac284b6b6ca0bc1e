"""A rank whose MPI_Abort never returns (seen under Open MPI with ULFM after rank 0 had
died) must still end, with the exit code it asked for."""

import threading

from mpi4py import MPI

from distx.engine.transport import MPITransport


class HangingAbort:
    def __getattr__(self, name):
        return getattr(MPI.COMM_WORLD, name)

    def Abort(self, code):  # noqa: N802 (mpi4py's name)
        threading.Event().wait()


transport = MPITransport(MPI.COMM_WORLD)
transport.comm = HangingAbort()
transport.abort(7)
