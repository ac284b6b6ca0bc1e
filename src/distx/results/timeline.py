"""`distx timeline results.h5 -o timeline.png`: what each rank did over time.

One row per rank: tasks of its sequence as bars (waits lighter and hatched), sweep
attempts as thin bars (red when they failed), milestones as ticks with their names.
Needs matplotlib (`pip install distx[plot]`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from distx.errors import UserError
from distx.results.reader import read_results

WAITS = {"Remote.WaitForMilestone", "Remote.GetValue", "Run.Delay", "Run.Sweep"}


def draw(path: str | Path, output: str | Path, run: int | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("distx timeline needs matplotlib",
                        fix="pip install 'distx[plot]' (or pip install matplotlib)") from None
    def read(file: h5py.File) -> tuple:
        chosen = int(file["runs"][()]["run"][-1]) if run is None else run
        return (chosen, _of_run(file["tasks"][()], chosen),
                _of_run(file["milestones"][()], chosen),
                _of_run(file["attempts"][()], chosen) if "attempts" in file else None,
                file.attrs["name"])
    run, tasks, milestones, attempts, name = read_results(path, read)
    if len(milestones) == 0:
        raise UserError(f"{path} has nothing recorded for run {run}")
    origin = milestones["time"].min()
    ranks = sorted(set(milestones["rank"]))
    figure, axes = plt.subplots(figsize=(12, 1.0 + 0.6 * len(ranks)))
    for row in tasks:
        task = row["task"].decode() if isinstance(row["task"], bytes) else row["task"]
        wait = task in WAITS
        axes.barh(row["rank"], row["end"] - row["start"], left=row["start"] - origin,
                  height=0.5, color="#9ecae1" if wait else "#3182bd",
                  hatch="//" if wait else None, edgecolor="white")
    if attempts is not None and len(attempts):
        failed = attempts["status"] != b"done"
        for chosen, colour in ((~failed, "#31a354"), (failed, "#de2d26")):
            subset = attempts[chosen]
            axes.barh(subset["rank"] + 0.32, subset["end"] - subset["start"],
                      left=subset["start"] - origin, height=0.12, color=colour)
    for row in milestones:
        label = row["name"].decode() if isinstance(row["name"], bytes) else row["name"]
        axes.plot([row["time"] - origin] * 2, [row["rank"] - 0.3, row["rank"] + 0.3], "k-",
                  linewidth=0.8)
        axes.annotate(label, (row["time"] - origin, row["rank"] - 0.32), fontsize=6,
                      rotation=45, ha="left", va="top")
    axes.set_yticks(ranks, [f"rank {rank}" for rank in ranks])
    axes.invert_yaxis()
    axes.set_xlabel("seconds since the first milestone")
    axes.set_title(f"{name}: run {run} (tasks dark, waits hatched, sweep attempts thin)")
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def _of_run(rows: np.ndarray, run: int) -> np.ndarray:
    return rows[rows["run"] == run]
