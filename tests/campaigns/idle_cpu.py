"""CPU used by ranks that only wait: `python tests/campaigns/idle_cpu.py [RANKS] [SECONDS]`.

Rank 0 sleeps (Run.Delay) while every other rank waits for its milestone. The CPU time of
each waiting rank (utime + stime from /proc/<pid>/stat) is sampled over SECONDS, after a
few seconds of start-up, and printed as a percentage of one core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SCRIPT = """
Version: 2
Name: idle
Distributed: True
Roles:
  coordinator:
    Sequence:
      - Task: Run.Delay
        Config: {{Time: {delay}}}
      - Task: Run.AddMilestone
        Config: {{Milestone: Done}}
  waiters:
    Ranks: "1-"
    Sequence:
      - Task: Remote.WaitForMilestone
        Config: {{Milestone: Done, From: coordinator, Timeout: 600}}
"""
WARM_UP = 4.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rank_pids(launcher: int) -> dict[int, int]:
    """PMI_RANK -> pid of the python ranks started by this launcher."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        marker = f"DISTX_IDLE_LAUNCHER={launcher}".encode()
        if b"distx" in command and marker in environment:
            for item in environment:
                if item.startswith(b"PMI_RANK="):
                    found[int(item.split(b"=")[1])] = int(entry.name)
    return found


def measure(ranks: int, seconds: float) -> dict[int, float]:
    """Percent of a core used by each waiting rank (rank -> %)."""
    folder = Path(tempfile.mkdtemp())
    script = folder / "idle.yml"
    script.write_text(textwrap.dedent(SCRIPT.format(delay=WARM_UP + seconds + 2)))
    mpiexec = Path(sys.executable).parent / "mpiexec"
    environment = dict(os.environ, DISTX_IDLE_LAUNCHER=str(os.getpid()))
    process = subprocess.Popen([str(mpiexec), "-n", str(ranks), sys.executable, "-m", "distx",
                                str(script), "-o", str(folder / "out.h5")], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(WARM_UP)
        pids = {rank: pid for rank, pid in rank_pids(os.getpid()).items() if rank > 0}
        before = {rank: cpu_seconds(pid) for rank, pid in pids.items()}
        time.sleep(seconds)
        after = {rank: cpu_seconds(pid) for rank, pid in pids.items()}
        if process.wait(timeout=120) != 0:
            raise RuntimeError("the idle run failed")
    finally:
        if process.poll() is None:
            process.kill()
    return {rank: 100 * (after[rank] - before[rank]) / seconds for rank in sorted(pids)}


if __name__ == "__main__":
    ranks = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    used = measure(ranks, seconds)
    for rank, percent in used.items():
        print(f"rank {rank}: {percent:.2f} % of a core over {seconds:g} s")
    print(f"mean {sum(used.values()) / len(used):.2f} %, max {max(used.values()):.2f} %")
