"""Kernels whose rank dies (SIGKILL, as the OOM killer or a lost node would end it) at
chosen seeds, once each: a marker file per seed remembers that it happened, so the task,
put back on the queue, succeeds on the rank that runs it next."""

import os
import signal
import time
from pathlib import Path


def _maybe_die(seed, die_at, markers):
    """SIGKILL this rank if `seed` is one of the space-separated seeds in `die_at` and no
    rank died at it before."""
    if str(seed) not in str(die_at).split():
        return
    marker = Path(markers) / f"died-at-{seed}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def square(seed, pause, die_at, markers):
    time.sleep(pause)
    _maybe_die(seed, die_at, markers)
    return seed * seed


def weighted(table, seed, pause, die_at, markers):
    """A partition's share: its integer sum times the seed, plus its row count."""
    time.sleep(pause)
    _maybe_die(seed, die_at, markers)
    return int(table.sum()) * seed + table.shape[0]


def work(seconds, me, victim, markers):
    """A role's task: sleep, after dying if this rank (`me`) is the `victim`."""
    if int(me) == int(victim):
        _maybe_die(0, "0", markers)
    time.sleep(seconds)
    return seconds


def step(grid, above, below, step, me, victim, at, markers):
    """A Run.Iterate step of 10 ms; rank `victim` (`me` is this rank) dies at step `at`."""
    if int(me) == int(victim) and step == at:
        _maybe_die(0, "0", markers)
    time.sleep(0.01)
