"""What listens on the network during a run: on one host, only the launcher's port.

MPICH's network module listens on 127.0.0.1 and the host's address in every rank, even
with one process; distx keeps single-host runs on shared memory (launch.py), so what
remains is hydra's PMI port, opened by mpiexec (and inherited by the ranks).
"""

from __future__ import annotations

import shutil

import h5py
import pytest
from conftest import SCRIPTS, log_lines, open_mpi_launcher, run_script

from distx.launch import SHARED_MEMORY_ONLY, prefer_shared_memory


@pytest.mark.parametrize("environment, expected", [
    ({}, True),                                                   # no launcher: alone
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "MPI_LOCALNRANKS": "4"}, True),  # hydra, one host
    ({"PMI_SIZE": "4", "PMI_RANK": "0", "MPI_LOCALNRANKS": "2"}, False),  # two hosts
    ({"PMI_SIZE": "4", "PMI_RANK": "0"}, False),                  # cannot tell
    ({"OMPI_COMM_WORLD_SIZE": "2"}, False),
    ({"SLURM_STEP_ID": "0", "PMI_SIZE": "2", "PMI_RANK": "0"}, False),
    ({"UCX_TLS": "tcp"}, False),                                  # the user's choice wins
])
def test_shared_memory_only_when_every_rank_is_on_this_host(environment, expected):
    before = dict(environment)
    assert prefer_shared_memory(environment) is expected
    assert environment == ({**before, **SHARED_MEMORY_ONLY} if expected else before)


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
@pytest.mark.parametrize("ranks", [None, 2])
def test_ranks_listen_on_no_port_of_their_own(tmp_path, ranks):
    if ranks and open_mpi_launcher():
        pytest.skip("the shared-memory settings are MPICH's (UCX/libfabric netmods)")
    output = tmp_path / "out.h5"
    result = run_script(SCRIPTS / "listeners.yml", output, ranks, timeout=120)
    assert result.returncode == 0, result.stderr
    with h5py.File(output, "r") as file:
        lines = [message for severity, message in log_lines(file) if severity == "OUTPUT"]
    assert len(lines) >= 2
    for line in lines:  # nothing, or the launcher's own PMI port that the rank inherited
        assert line == "none" or ('"mpiexec"' in line and "0.0.0.0:" in line), line
