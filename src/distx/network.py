"""What listens on the network during a run, and keeping single-host runs off TCP.

MPICH's ch4 device initialises its network module (UCX, or libfabric with
MPIR_CVAR_CH4_NETMOD=ofi) even when every rank is on one host, and that module listens on
TCP ports of every interface (127.0.0.1 and the host's address), even with one process.
When the launcher says that every rank is on this host (MPICH's launchers set
MPI_LOCALNRANKS = PMI_SIZE; a process started without a launcher is alone), distx
restricts UCX and libfabric to shared memory before MPI starts, so ranks open no port.
Settings the user made win: a set UCX_TLS or FI_PROVIDER is left alone.

What still listens is the launcher's own: hydra's `mpiexec` opens its PMI control port on
0.0.0.0 (ranks inherit that socket). `mpiexec.gforker`, in the same wheel, starts ranks on
one host over socket pairs and opens no port at all.
"""

from __future__ import annotations

from collections.abc import MutableMapping

SHARED_MEMORY_ONLY = {"UCX_TLS": "self,sm", "FI_PROVIDER": "shm"}


def all_ranks_local(environment: MutableMapping[str, str]) -> bool:
    """True if the launcher says every rank runs on this host (or there is no launcher)."""
    size, local = environment.get("PMI_SIZE"), environment.get("MPI_LOCALNRANKS")
    if size is not None:
        return local is not None and local == size
    launched = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_STEP_ID")
    return not any(name in environment for name in launched)


def prefer_shared_memory(environment: MutableMapping[str, str]) -> bool:
    """Before MPI starts: on one host, keep MPICH's network module on shared memory.
    True if the settings were made."""
    if not all_ranks_local(environment) or any(name in environment
                                              for name in SHARED_MEMORY_ONLY):
        return False
    environment.update(SHARED_MEMORY_ONLY)
    return True
