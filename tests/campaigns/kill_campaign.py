"""Kill campaign: SIGKILL a large sweep at random moments and check every file recovers.

    python tests/campaigns/kill_campaign.py [--rows 1000000] [--kills 50] [--rebuild-kills 20]
                                            [--reset-kills 10] [--seed 1] [--work DIR]

1. An uninterrupted run of a `rows`-experiment sweep (`mpiexec -n 3`) is the reference.
2. Sweep kills: a run, then `--resume` after each kill, each SIGKILLed at a random moment
   (rank 0, rank 1 or the launcher, then every rank left). After each kill `distx recover`
   must succeed, the file must open with plain h5py, every experiment done before the kill
   must still be done with its result, and the re-run bound is measured: the kill time
   minus the end of the last result the file kept. A last --resume completes the table,
   which must equal the reference (ids, keyfields, statuses, results).
3. Rebuild kills: --resume of the finished file with float seeds (the seed column changes
   type, so the experiments table is rebuilt), killed at a random moment; the same checks.
4. Reset kills: `distx reset --status done` killed at a random moment: the file holds all
   rows done or all created, never a mix.
Prints the figures: kills tried, files recovered, the longest re-run window.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from conftest import mpiexec  # noqa: E402
from test_durability import kill_everything, rank_pids  # noqa: E402

from distx.results import checkpoint  # noqa: E402

SCRIPT = """\
Version: 2
Name: campaign
Kernels: {kernels}
Experiments:
  Keyfields:
    seed: {seeds}
Sequence:
  - Task: Run.Sweep
    Config: {{Kernel: probe.square}}
"""
KEYS = ["id", "seed", "status", "result"]


class RunFailed(Exception):
    """A run ended with an error before it was killed."""


@dataclass
class Figures:
    kills: int = 0
    recovered: int = 0
    finished_before_kill: int = 0
    rebuild_kills: int = 0
    reset_kills: int = 0
    rerun_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def report(self) -> str:
        tried = self.kills + self.rebuild_kills + self.reset_kills
        window = max(self.rerun_seconds, default=0.0)
        return "\n".join([
            f"kills tried: {tried} ({self.kills} during sweeps, {self.rebuild_kills} during "
            f"--resume table rebuilds, {self.reset_kills} during reset)",
            f"runs that finished before their kill: {self.finished_before_kill}",
            f"files recovered: {self.recovered} of {tried}; unrecoverable: "
            f"{tried - self.recovered}",
            f"max re-run work: the last {window:.2f} s of results (kill time - end of the "
            f"last result kept; median {np.median(self.rerun_seconds or [0]):.2f} s over "
            f"{len(self.rerun_seconds)} mid-sweep kills)",
            *(f"FAILURE: {failure}" for failure in self.failures)])


def distx_command(*args: str, ranks: int | None = 3) -> list[str]:
    command = [sys.executable, "-m", "distx", *map(str, args)]
    return command if ranks is None else [*mpiexec(), "-n", str(ranks), *command]


def write_scripts(work: Path, rows: int) -> tuple[Path, Path]:
    kernels = TESTS / "kernels"
    ints = work / "campaign.yml"
    floats = work / "campaign_float.yml"
    ints.write_text(SCRIPT.format(kernels=kernels, seeds=f"{{stop: {rows}}}"))
    floats.write_text(SCRIPT.format(kernels=kernels, seeds=f"{{start: 0.0, stop: {rows + 1}}}"))
    return ints, floats


def table(path: Path) -> np.ndarray:
    """The experiments table (empty if the run was killed before its sweep began)."""
    with h5py.File(path, "r") as file:
        if "experiments" in file:
            return file["experiments"][()]
    return np.zeros(0, dtype=[("id", "S16"), ("seed", "f8"), ("status", "S8"),
                              ("result", "f8"), ("end", "f8")])


def kill_at_random(command: list[str], output: Path, seconds: float, rng: random.Random,
                   ranks: bool = True, after_checkpoint: bool = False,
                   mid_sweep: bool = False) -> float | None:
    """Start `command`, SIGKILL it after `seconds`, counted from its first checkpoint if
    `after_checkpoint`, from the first MiB of sweep results in its journal if `mid_sweep`;
    the kill time, or None if it ended first."""
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = output.with_name(output.name + ".journal")
    try:
        while after_checkpoint and not checkpoint.leftovers(output) and job.poll() is None:
            time.sleep(0.005)
        while mid_sweep and job.poll() is None and \
                (not journal.exists() or journal.stat().st_size < 1 << 20):
            time.sleep(0.005)
        end = time.monotonic() + seconds
        while time.monotonic() < end and job.poll() is None:
            time.sleep(0.01)
        if job.poll() is not None:
            if job.returncode != 0:
                raise RunFailed(f"{' '.join(command[-4:])} failed by itself "
                                f"(exit code {job.returncode})")
            return None
        pids = rank_pids(str(output)) if ranks else {}
        victim = rng.choice(["launcher", *pids])
        killed_at = time.time()
        if victim == "launcher":
            job.kill()
        else:
            subprocess.run(["kill", "-9", str(pids[victim])], check=False)
        return killed_at
    finally:
        kill_everything(job, output)
        job.wait()
        while rank_pids(str(output)):
            time.sleep(0.05)


def recover_and_check(output: Path, done_before: dict[bytes, float],
                      figures: Figures, what: str) -> np.ndarray | None:
    """`distx recover`, then the file must open and keep every earlier done result."""
    recovered = subprocess.run(distx_command("recover", output, ranks=None),
                               capture_output=True, text=True)
    if recovered.returncode != 0:
        figures.failures.append(f"{what}: recover failed: {recovered.stderr.strip()}")
        return None
    try:
        rows = table(output)
    except (OSError, KeyError) as error:
        figures.failures.append(f"{what}: unreadable after recover: {error}")
        return None
    done = rows[rows["status"] == b"done"]
    if not np.array_equal(done["result"], np.asarray(done["seed"], dtype=float) ** 2):
        figures.failures.append(f"{what}: a done row holds a wrong result")
        return None
    kept = dict(zip(done["id"].tolist(), done["result"].tolist()))
    lost = [key for key, value in done_before.items() if kept.get(key) != value]
    if lost:
        figures.failures.append(f"{what}: {len(lost)} experiment(s) done before are lost")
        return None
    figures.recovered += 1
    return rows


def sweep_kills(work: Path, script: Path, count: int, horizon: float, rng: random.Random,
                figures: Figures, mid_sweep: bool = False) -> Path:
    output = work / "killed.h5"
    done: dict[bytes, float] = {}
    while figures.kills < count:
        extra = ["--resume"] if output.exists() else []
        killed_at = kill_at_random(distx_command(script, "-o", output, *extra), output,
                                   rng.uniform(0, 2.0 if mid_sweep else 1.3 * horizon), rng,
                                   mid_sweep=mid_sweep)
        if killed_at is None:        # the run finished: start over with a new file
            figures.finished_before_kill += 1
            output.unlink(missing_ok=True)
            done = {}
            continue
        figures.kills += 1
        if not output.exists():            # killed before the file was created
            figures.recovered += 1
            continue
        rows = recover_and_check(output, done, figures, f"sweep kill {figures.kills}")
        if rows is None:
            break
        finished = rows[rows["status"] == b"done"]
        if len(done) < len(finished) < len(rows):   # killed while this run recorded results
            figures.rerun_seconds.append(max(0.0, killed_at - float(finished["end"].max())))
        done = dict(zip(finished["id"].tolist(), finished["result"].tolist()))
        print(f"  sweep kill {figures.kills}: {len(finished)} done kept", flush=True)
        if len(finished) == len(rows) > 0:   # complete: the next kill starts a new file
            output.unlink()
            done = {}
    return output


def rebuild_kills(work: Path, base: Path, script: Path, count: int, rng: random.Random,
                  figures: Figures, rebuild_seconds: float) -> Path:
    """Kills from the resume's first checkpoint (the file is copied) to `rebuild_seconds`
    later: the table is read, merged, rebuilt and written in that window."""
    output = work / "rebuild.h5"
    rows = table(base)
    done = dict(zip(rows["id"].tolist(), rows["result"].tolist()))
    while figures.rebuild_kills < count:
        shutil.copyfile(base, output)
        killed_at = kill_at_random(distx_command(script, "-o", output, "--resume"), output,
                                   rng.uniform(0, rebuild_seconds), rng, after_checkpoint=True)
        if killed_at is None:
            figures.finished_before_kill += 1
            continue
        figures.rebuild_kills += 1
        if recover_and_check(output, done, figures,
                             f"rebuild kill {figures.rebuild_kills}") is None:
            break
        print(f"  rebuild kill {figures.rebuild_kills}: recovered", flush=True)
    return output


def reset_kills(work: Path, base: Path, count: int, rng: random.Random,
                figures: Figures) -> None:
    output = work / "reset.h5"
    while figures.reset_kills < count:
        shutil.copyfile(base, output)
        command = distx_command("reset", output, "--status", "done", ranks=None)
        if kill_at_random(command, output, rng.uniform(0.2, 4), rng, ranks=False) is None:
            figures.finished_before_kill += 1
            continue
        figures.reset_kills += 1
        if subprocess.run(distx_command("recover", output, ranks=None),
                          capture_output=True).returncode != 0:
            figures.failures.append(f"reset kill {figures.reset_kills}: recover failed")
            continue
        statuses = set(table(output)["status"].tolist())
        if statuses in ({b"done"}, {b"created"}):
            figures.recovered += 1
        else:
            figures.failures.append(f"reset kill {figures.reset_kills}: a mix {statuses}")


def run_campaign(work: Path, rows: int, kills: int, rebuilds: int, resets: int,
                 seed: int, mid_sweep: bool = False) -> Figures:
    rng = random.Random(seed)
    figures = Figures()
    ints, floats = write_scripts(work, rows)
    reference_path = work / "reference.h5"
    began = time.monotonic()
    subprocess.run(distx_command(ints, "-o", reference_path), check=True,
                   capture_output=True)
    horizon = time.monotonic() - began
    reference = table(reference_path)[KEYS]
    print(f"reference: {rows} experiments in {horizon:.1f} s", flush=True)

    try:
        phases(work, ints, floats, reference_path, reference, horizon, rows, kills, rebuilds,
               resets, rng, figures, mid_sweep)
    except RunFailed as error:
        figures.failures.append(str(error))
    return figures


def phases(work: Path, ints: Path, floats: Path, reference_path: Path, reference: np.ndarray,
           horizon: float, rows: int, kills: int, rebuilds: int, resets: int,
           rng: random.Random, figures: Figures, mid_sweep: bool) -> None:
    """Sweep kills and a final resume, rebuild kills and a final resume, reset kills."""
    killed = sweep_kills(work, ints, kills, horizon, rng, figures, mid_sweep)
    if not figures.failures and kills:
        finished = subprocess.run(distx_command(ints, "-o", killed, "--resume"),
                                  capture_output=True, text=True)
        if finished.returncode != 0 or not np.array_equal(table(killed)[KEYS], reference):
            figures.failures.append("the resumed table differs from the uninterrupted run's")
    rebuilt = rebuild_kills(work, reference_path, floats, rebuilds, rng, figures,
                            rebuild_seconds=horizon / 2)
    if not figures.failures and rebuilds:
        finished = subprocess.run(distx_command(floats, "-o", rebuilt, "--resume"),
                                  capture_output=True, text=True)
        final = table(rebuilt)
        same = np.array_equal(final[KEYS][:rows].astype(final[KEYS].dtype),
                              reference.astype(final[KEYS].dtype))
        if finished.returncode != 0 or not same or set(final["status"]) != {b"done"}:
            figures.failures.append("the rebuilt table is not the reference plus new rows")
    reset_kills(work, reference_path, resets, rng, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--rebuild-kills", type=int, default=20)
    parser.add_argument("--reset-kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--mid-sweep", action="store_true",
                        help="kill only while a sweep records results (measures the re-run "
                        "window)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distx-kills-", dir=arguments.work) as work:
        figures = run_campaign(Path(work), arguments.rows, arguments.kills,
                               arguments.rebuild_kills, arguments.reset_kills, arguments.seed,
                               arguments.mid_sweep)
    print(figures.report())
    sys.exit(1 if figures.failures else 0)


if __name__ == "__main__":
    main()
