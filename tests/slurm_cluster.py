"""A one-node Slurm cluster on this machine, for the tests of jobs/*.sbatch.

Needs Debian's slurm-wlm and munge (.ci/run installs them) and root (SlurmUser=root).
Facts from these machines: proctrack/linuxproc and task/none work without cgroups,
SlurmdParameters=config_overrides lets the node claim more CPUs than it has, and munged
must run as the munge user with a key made by mungekey.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "munged", "mungekey")
CONFIG = """\
ClusterName=distxtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmdSpoolDir={folder}/spool
StateSaveLocation={folder}/state
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


def why_not_available() -> str | None:
    """None when a cluster can be started here, else the reason."""
    missing = [name for name in DAEMONS
               if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing); "
                "install Debian's slurm-wlm and munge as .ci/run does")
    if os.geteuid() != 0:
        return "a one-node Slurm cluster needs root here (SlurmUser=root)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _munge_works() -> bool:
    encoded = subprocess.run(["munge", "-n"], capture_output=True)
    return encoded.returncode == 0 and subprocess.run(
        ["unmunge"], input=encoded.stdout, capture_output=True).returncode == 0


def start_munge() -> None:
    if _munge_works():
        return
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True)
    shutil.chown("/etc/munge/munge.key", "munge", "munge")
    os.chmod("/etc/munge/munge.key", 0o400)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    _wait(_munge_works, 10, "munged to answer")


def _wait(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Cluster:
    def __init__(self, folder: Path, python_bin: Path) -> None:
        self.folder = folder
        (folder / "spool").mkdir()
        (folder / "state").mkdir()
        config = folder / "slurm.conf"
        config.write_text(CONFIG.format(host=socket.gethostname(), folder=folder,
                                        controller_port=_free_port(), node_port=_free_port()))
        self.env = dict(os.environ, SLURM_CONF=str(config),
                        PATH=f"{python_bin}:{os.environ['PATH']}")

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              check=check, timeout=600)

    def start(self) -> None:
        start_munge()
        self.run("slurmctld")
        self.run("slurmd")
        _wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False).stdout, 60,
              "the Slurm node to be idle")

    def stop(self) -> None:
        self.run("scontrol", "shutdown", check=False)
        for name in ("slurmd.pid", "slurmctld.pid"):
            pid_file = self.folder / name
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text()), 15)

    def job_state(self, job: str) -> str:
        return self.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
