"""Runs across hosts that share no filesystem: rank 0 ships the kernels and the data.

The hosts are namespaces on this machine (tests/netns_hosts.py): node1 runs mpiexec and
rank 0 and sees the test's folder; node2 sees a /tmp of its own, so neither the script
folder nor the kernels. Ranks are placed round-robin: even ranks on node1, odd on node2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import netns_hosts
import numpy as np
import pytest
from conftest import distx, done_count, experiments, text, values

WHY_NOT = netns_hosts.why_not_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))

HELPERS = '''\
"""A module of the kernels folder that the kernel module imports (shipped with it)."""

OFFSET = 1000
'''
NODEK = '''\
"""Kernels of the multi-host tests."""

import time

import numba
import numpy as np
from helpers import OFFSET


@numba.njit(cache=True)
def square(seed):
    return seed * seed + OFFSET


def slow_square(seed, pause):
    time.sleep(pause)
    return seed * seed + OFFSET


def smooth(grid, above, below, step):
    """Each row becomes the mean of itself and its neighbours (zeros past the edges,
    where `above` or `below` has no rows)."""
    edge = np.zeros((1, grid.shape[1]))
    padded = np.vstack([above if len(above) else edge, grid, below if len(below) else edge])
    grid[:] = (padded[:-2] + padded[1:-1] + padded[2:]) / 3


def block(grid):
    return grid.copy()
'''


def smoothed(grid: np.ndarray, steps: int) -> np.ndarray:
    """What `smooth` makes of `grid` in `steps` steps, on one process."""
    for _ in range(steps):
        edge = np.zeros((1, grid.shape[1]))
        padded = np.vstack([edge, grid, edge])
        grid = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
    return grid


SWEEP = """\
    Version: 2
    Name: sweep
    Experiments:
      Keyfields:
        seed: {stop: 40}
    Sequence:
      - Task: Run.Sweep
        Config: {Kernel: nodek.square}
    """


def write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture
def cluster(tmp_path):
    """node1 and node2; node2 sees of this repository only what is installed (src/ and the
    venv), not its kernels, tests or jobs."""
    hidden = tuple(REPOSITORY / name for name in ("kernels", "tests", "jobs"))
    with netns_hosts.hosts(tmp_path / "cluster", hidden=hidden) as made:
        yield made


@pytest.fixture
def project(tmp_path) -> Path:
    """Rank 0's project folder: kernels/ (nodek imports helpers) beside the scripts."""
    folder = tmp_path / "project"
    write(folder, "kernels/nodek.py", NODEK)
    write(folder, "kernels/helpers.py", HELPERS)
    return folder


def environment(cluster, **extra: str) -> dict[str, str]:
    """Each host's cache of shipped kernels at one path, on that host's own disk."""
    return dict(os.environ, PYTHONUNBUFFERED="1", DISTX_CACHE_DIR=str(cluster.folder / "cache"),
                **netns_hosts.NETWORK_ONLY, **extra)


def launch(cluster, ranks: int, script: Path, *arguments: str, hosts: list[str] | None = None,
           timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    """`mpiexec` on node1 with ranks on `hosts` (all), as a user on the head node would.

    It starts in / : hydra starts every rank in mpiexec's folder, which must exist on
    every host."""
    command = cluster.mpiexec(ranks, sys.executable, "-m", "distx", str(script), *arguments,
                              hosts=hosts)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd="/", env=environment(cluster, **extra), stdin=subprocess.DEVNULL)


def recovered_experiments(output: Path, seconds: float = 10) -> np.ndarray:
    """The experiments table of a killed run, as a user gets it: `distx recover` folds the
    journal into the file (the checkpoint alone may be older than the last results). It is
    refused while the dying writer still holds its claim: Linux releases a dying process's
    files a moment after the process has left its namespaces."""
    end = time.monotonic() + seconds
    while (recovered := distx("recover", output, timeout=60)).returncode != 0:
        assert time.monotonic() < end, recovered.stderr
        time.sleep(0.2)
    with h5py.File(output, "r") as file:
        return experiments(file)


def hosts_of(output: Path) -> list[str]:
    with h5py.File(output, "r") as file:
        return [text(host) for host in file["provenance/hosts"][()]]


def test_sweep_with_a_numba_kernel_on_a_host_without_the_kernels(cluster, project):
    script = write(project, "sweep.yml", SWEEP)
    assert not cluster.seen_by("node2", project).exists()  # node2 does not see the kernels
    listed = subprocess.run(cluster.command("node2", "ls", "-A", str(REPOSITORY / "kernels")),
                            capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout == ""  # nor the repository's
    output = project / "sweep.h5"
    result = launch(cluster, 3, script, "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert hosts_of(output) == ["node1", "node2", "node1"]
    with h5py.File(output, "r") as file:
        table = experiments(file)
    assert (table["status"] == b"done").all()
    assert sorted(table["result"].tolist()) == [seed * seed + 1000 for seed in range(40)]
    assert set(table["host"][table["rank"] == 1]) == {b"node2"}  # node2 ran some of it
    assert set(table["host"][table["rank"] == 2]) == {b"node1"}


def test_roles_iterate_and_kept_files_on_every_host(cluster, project):
    script = write(project, "roles.yml", """\
        Version: 2
        Name: roles
        Distributed: True
        Timeout: 60
        Data:
          grid: {File: grid.npy, Partition: rows}
        Roles:
          coordinator:
            Sequence:
              - Task: Run.CliExecute
                Config: {Parameters: "hostname > host.txt", CWD: "@{TempFolder}",
                         Keep: [host.txt]}
              - Task: Remote.WaitForMilestone
                Config: {Milestone: Ready, From: workers}
              - Task: Remote.GetValue
                Config: {Value: block, From: workers, Reduce: concat, PublishName: grid}
          workers:
            Sequence:
              - Task: Run.Iterate
                Config: {Kernel: nodek.smooth, Inputs: [grid], Steps: 3}
              - Task: Run.Kernel
                Config: {Kernel: nodek.block, Inputs: [grid], Publish: block}
              - Task: Run.CliExecute
                Config: {Parameters: "hostname > host.txt; echo @{Host} >> host.txt",
                         CWD: "@{TempFolder}", Keep: [host.txt]}
              - Task: Run.AddMilestone
                Config: {Milestone: Ready}
        """)
    grid = np.random.default_rng(3).random((12, 3))
    np.save(project / "grid.npy", grid)  # a data file only rank 0's host has
    output = project / "roles.h5"
    result = launch(cluster, 3, script, "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert hosts_of(output) == ["node1", "node2", "node1"]
    with h5py.File(output, "r") as file:
        kept = {int(rank.removeprefix("rank")): bytes(files["host.txt"][()]).decode()
                for run in file["files"].values() for rank, files in run.items()}
        recorded = values(file)
    assert kept == {0: "node1\n", 1: "node2\nnode2\n", 2: "node1\nnode1\n"}
    # The halo rows crossed from node2 to node1 and back at every step.
    np.testing.assert_allclose(recorded[(0, "grid")], smoothed(grid, 3))


def test_numba_compiles_once_per_host_and_later_runs_load_its_cache(cluster, project):
    """numba writes its index and compiled code beside the shipped copy on each host; a
    run that compiled again would rewrite them."""
    script = write(project, "sweep.yml", SWEEP)
    first = launch(cluster, 3, script, "--output", str(project / "first.h5"))
    assert first.returncode == 0, first.stderr
    shipped = next((cluster.folder / "cache" / "kernels").iterdir())
    on_node2 = cluster.seen_by("node2", shipped)
    assert sorted(path.name for path in on_node2.iterdir()) == [
        "__pycache__", "helpers.py", "nodek.py"]
    compiled = {path: path.stat().st_mtime_ns for copy in (shipped, on_node2)
                for path in (copy / "__pycache__").glob("nodek.square-*")}
    assert len(compiled) == 4  # an index and compiled code on node1 (rank 2) and node2
    second = launch(cluster, 3, script, "--output", str(project / "second.h5"))
    assert second.returncode == 0, second.stderr
    for copy in (shipped, on_node2):  # the same folder again, its compiled code untouched
        assert [path.name for path in copy.parent.iterdir()] == [shipped.name]
    assert {path: path.stat().st_mtime_ns for copy in (shipped, on_node2)
            for path in (copy / "__pycache__").glob("nodek.square-*")} == compiled


def test_host_lost_mid_sweep_ends_the_run_and_resume_completes_it(cluster, project):
    script = write(project, "slow.yml", """\
        Version: 2
        Name: slow
        Experiments:
          Keyfields:
            seed: {stop: 300}
        Sequence:
          - Task: Run.Sweep
            Config: {Kernel: nodek.slow_square, Args: {pause: 0.04}}
        """)
    output = project / "slow.h5"
    command = cluster.mpiexec(3, sys.executable, "-m", "distx", str(script),
                              "--output", str(output))
    started = time.monotonic()
    with subprocess.Popen(command, cwd="/", env=environment(cluster), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL) as run:
        while done_count(output) < 30 and run.poll() is None:
            time.sleep(0.3)
        running = run.poll() is None
        cluster.power_off("node2")
        try:
            log = run.communicate(timeout=120)[0]
        finally:
            run.kill()
        assert running, log
        assert time.monotonic() - started < 150
        assert run.returncode != 0, log
    # mpiexec gives up when it loses node2's proxy (MPICH's choice: the whole job ends);
    # node1's ranks are ended with it, which may take a moment longer.
    assert cluster.settle("node1", 30), log
    table = recovered_experiments(output)
    before = table[table["status"] == b"done"]
    assert 30 <= len(before) < 300
    assert (before["result"] == before["seed"] ** 2 + 1000).all()
    resumed = launch(cluster, 2, script, "--output", str(output), "--resume",
                     hosts=["node1"])
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(output, "r") as file:
        table = experiments(file)
    assert (table["status"] == b"done").all()
    assert (table["result"] == table["seed"] ** 2 + 1000).all()
    assert hosts_of(output) == ["node1", "node1"]


def test_hosts_are_removed_even_when_the_test_fails(tmp_path):
    with pytest.raises(RuntimeError), netns_hosts.hosts(tmp_path / "cluster") as made:
        sleeper = subprocess.Popen(made.command("node2", "sleep", "300"))
        end = time.monotonic() + 10
        while not made.processes("node2") and time.monotonic() < end:
            time.sleep(0.05)
        assert made.processes("node2")  # the sleep runs on node2
        raise RuntimeError("a failing test")
    assert sleeper.wait(timeout=10) != 0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for namespace in [*made.namespaces.values(), made.switch]:
        assert namespace not in listed
        assert not Path("/etc/netns", namespace).exists()
