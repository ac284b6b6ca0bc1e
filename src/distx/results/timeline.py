"""`distx timeline results.h5 -o timeline.png`: what each rank did over time.

One row per rank, labelled with its role: data distribution (PreRun to Run), the tasks of
its sequence as bars coloured by task type (waits hatched) with their names where the bar
is wide enough, sweep attempts as a thin strip below (green done, red failed), and its
milestones. A milestone every rank reached at about the same moment is drawn once, as a
line across all rows labelled above the plot; the others are ticks on their row, their
labels staggered so that none overlaps. Needs matplotlib (`pip install distx[plot]`).
`trace.py` writes the same events as a Chrome/Perfetto trace.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from distx.errors import UserError
from distx.results.store import read_results
from distx.vocabulary import PRE_RUN, RUN

WAITS = {"Remote.WaitForMilestone", "Remote.GetValue", "Run.Delay", "Run.Sweep"}
SHARED_SPREAD = 0.01
"""A milestone reached by every rank within this fraction of the run is drawn once."""
FONT = 7
TASK_COLOURS = (0, 1, 4, 5, 6, 7, 8, 9)
"""tab10 without its green and red, which mean done and failed sweep attempts."""
MIN_BAR = 0.002
"""The narrowest task bar, as a fraction of the run: a task of a millisecond stays visible."""
MERGED = 0.004
"""Milestones of one rank closer than this fraction of the run share one label."""
WIDTH_INCHES, DPI = 14.0, 120


@dataclass
class RunEvents:
    """The events of one run of a results file."""

    name: str
    run: int
    tasks: np.ndarray
    milestones: np.ndarray
    attempts: np.ndarray | None
    roles: dict[int, str]          # rank -> role
    origin: float                  # the first milestone: time 0 of the picture and trace


def text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def chosen_run(file: h5py.File, run: int | None) -> int:
    """`run`, or the latest run of the file."""
    runs = file["runs"][()]["run"]
    if run is None:
        return int(runs[-1]) if len(runs) else 0
    if run not in runs:
        raise UserError(f"{file.filename} has no run {run}",
                        fix=f"use one of: {', '.join(map(str, runs))}")
    return run


def read_run(file: h5py.File, run: int | None, attempts: bool = True) -> RunEvents:
    run = chosen_run(file, run)
    milestones = _of_run(file["milestones"][()], run)
    if len(milestones) == 0:
        raise UserError(f"{file.filename} has nothing recorded for run {run}")
    roles = {int(row["rank"]): text(row["role"]) for row in milestones}
    return RunEvents(
        name=text(file.attrs["name"]), run=run, tasks=_of_run(file["tasks"][()], run),
        milestones=milestones,
        attempts=_of_run(file["attempts"][()], run) if attempts and "attempts" in file
        else None,
        roles=dict(sorted(roles.items())), origin=float(milestones["time"].min()))


def _of_run(rows: np.ndarray, run: int) -> np.ndarray:
    return rows[rows["run"] == run]


def distribution_spans(events: RunEvents) -> dict[int, tuple[float, float]]:
    """rank -> (PreRun, Run) times: the data distribution before its sequence."""
    reached: dict[int, dict[str, float]] = defaultdict(dict)
    for row in events.milestones:
        reached[int(row["rank"])][text(row["name"])] = float(row["time"])
    return {rank: (names[PRE_RUN], names[RUN]) for rank, names in reached.items()
            if PRE_RUN in names and RUN in names}


def draw(path: str | Path, output: str | Path, run: int | None = None) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("distx timeline needs matplotlib",
                        fix="pip install 'distx[plot]' (or pip install matplotlib)") from None
    events = read_results(path, lambda file: read_run(file, run))
    ranks = list(events.roles)
    figure, axes = plt.subplots(figsize=(WIDTH_INCHES, 1.8 + 0.55 * len(ranks)), dpi=DPI)
    span = _span(events)
    axes.set_xlim(-0.01 * span, 1.01 * span)
    axes.set_ylim(max(ranks) + 0.7, min(ranks) - 0.7)
    handles = _draw_distribution(axes, events)
    handles += _draw_tasks(axes, events, span)
    handles += _draw_attempts(axes, events)
    handles += _draw_milestones(axes, events, span)
    axes.set_yticks(ranks, [f"rank {rank}\n{events.roles[rank]}" for rank in ranks],
                    fontsize=FONT + 1)
    axes.set_xlabel("seconds since the first milestone")
    axes.grid(axis="x", color="#dddddd", linewidth=0.5)
    axes.set_axisbelow(True)
    axes.set_title(f"{events.name}: run {events.run}", loc="left", pad=30)
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0),
                fontsize=FONT, frameon=False)
    figure.tight_layout()
    output = Path(output)
    figure.savefig(output)
    plt.close(figure)
    return output


def _span(events: RunEvents) -> float:
    ends = [events.milestones["time"].max()]
    if len(events.tasks):
        ends.append(events.tasks["end"].max())
    if events.attempts is not None and len(events.attempts):
        ends.append(events.attempts["end"].max())
    return max(float(max(ends)) - events.origin, 1e-3)


def _text_width(label: str, span: float) -> float:
    """About how wide `label` is drawn, in seconds of the x axis."""
    plot_inches = WIDTH_INCHES * 0.72
    return len(label) * FONT * 0.62 / 72 / plot_inches * span


def _draw_distribution(axes, events: RunEvents) -> list:
    from matplotlib.patches import Patch

    spans = distribution_spans(events)
    for rank, (start, end) in spans.items():
        axes.barh(rank, end - start, left=start - events.origin, height=0.5,
                  color="#d9d9d9", hatch="..", edgecolor="#969696", linewidth=0)
    return [Patch(facecolor="#d9d9d9", hatch="..", edgecolor="#969696",
                  label="data distribution")] if spans else []


def _draw_tasks(axes, events: RunEvents, span: float) -> list:
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    names = sorted({text(name) for name in events.tasks["task"]})
    palette = [colormaps["tab10"](index) for index in TASK_COLOURS]
    colours = {name: palette[index % len(palette)] for index, name in enumerate(names)}
    for row in events.tasks:
        name = text(row["task"])
        left, width = float(row["start"]) - events.origin, float(row["end"] - row["start"])
        failed = text(row["status"]) != "done"
        axes.barh(row["rank"], max(width, MIN_BAR * span), left=left, height=0.5,
                  color=colours[name],
                  alpha=0.55 if name in WAITS else 0.9, hatch="//" if name in WAITS else None,
                  edgecolor="#b30000" if failed else "white", linewidth=1.5 if failed else 0.5)
        label = name.split(".", 1)[-1]
        if _text_width(label, span) < width * 0.95:
            axes.text(left + width / 2, row["rank"], label, ha="center", va="center",
                      fontsize=FONT, color="black", clip_on=True)
    legend = [Patch(facecolor=colours[name], alpha=0.55 if name in WAITS else 0.9,
                    hatch="//" if name in WAITS else None,
                    label=name + (" (waits)" if name in WAITS else "")) for name in names]
    if (events.tasks["status"] != b"done").any():
        legend.append(Patch(facecolor="white", edgecolor="#b30000", linewidth=1.5,
                            label="task not done"))
    return legend


def _draw_attempts(axes, events: RunEvents) -> list:
    from matplotlib.patches import Patch

    attempts = events.attempts
    if attempts is None or not len(attempts):
        return []
    failed = attempts["status"] != b"done"
    for rank in np.unique(attempts["rank"]).tolist():
        for chosen, colour in ((~failed, "#31a354"), (failed, "#de2d26")):
            rows = attempts[chosen & (attempts["rank"] == rank)]
            if len(rows):
                bars = np.column_stack([rows["start"] - events.origin,
                                        np.maximum(rows["end"] - rows["start"], 0)])
                axes.broken_barh(bars, (rank + 0.27, 0.16), facecolors=colour, linewidth=0)
    return [Patch(facecolor="#31a354", label="sweep attempt done"),
            Patch(facecolor="#de2d26", label="sweep attempt failed")]


def _draw_milestones(axes, events: RunEvents, span: float) -> list:
    from matplotlib.lines import Line2D

    by_name: dict[str, list[np.void]] = defaultdict(list)
    for row in events.milestones:
        by_name[text(row["name"])].append(row)
    ranks = set(events.roles)
    shared, own = [], []
    for name, rows in by_name.items():
        times = np.array([row["time"] for row in rows]) - events.origin
        if {int(row["rank"]) for row in rows} == ranks and np.ptp(times) <= SHARED_SPREAD * span:
            shared.append((float(times.min()), name))
        else:
            own += [(float(row["time"]) - events.origin, int(row["rank"]), name) for row in rows]
    top = min(ranks) - 0.7
    for (when, name), level in zip(sorted(shared), _levels(sorted(shared), span)):
        axes.axvline(when, color="#525252", linestyle=":", linewidth=0.8)
        axes.annotate(name, (when, top), xytext=(2, 3 + 9 * level), textcoords="offset points",
                      fontsize=FONT, ha="left", va="bottom", annotation_clip=False)
    for rank in ranks:
        mine = _merged(sorted((when, name) for when, owner, name in own if owner == rank),
                       span)
        for (when, name), level in zip(mine, _levels(mine, span, depth=2)):
            axes.plot([when, when], [rank - 0.3, rank + 0.3], color="black", linewidth=1.0)
            right = when + _text_width(name, span) > span
            axes.annotate(name, (when, rank - 0.3), xytext=(-2 if right else 2, -1 - 8 * level),
                          textcoords="offset points", fontsize=FONT - 1,
                          ha="right" if right else "left", va="top")
    return [Line2D([], [], color="#525252", linestyle=":", label="milestone of every rank"),
            Line2D([], [], color="black", label="milestone of one rank")]


def _merged(milestones: list[tuple[float, str]], span: float) -> list[tuple[float, str]]:
    """Milestones (time, name) of one rank, those reached within MERGED of the one before
    joined into one label at the first one's time."""
    merged: list[tuple[float, str]] = []
    for when, name in milestones:
        if merged and when - merged[-1][0] <= MERGED * span:
            merged[-1] = (merged[-1][0], f"{merged[-1][1]} {name}")
        else:
            merged.append((when, name))
    return merged


def _levels(labels: list[tuple[float, str]], span: float, depth: int = 4) -> list[int]:
    """A text row for each (time, label), sorted by time, so that no two labels on one row
    overlap: the first row whose last label ends before this one starts (the deepest row
    when all are taken)."""
    ends = [-np.inf] * depth
    levels = []
    for when, label in labels:
        level = next((i for i, end in enumerate(ends) if end < when), depth - 1)
        ends[level] = when + _text_width(label, span) * 1.1
        levels.append(level)
    return levels
