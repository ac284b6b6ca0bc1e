"""Kernels that report what a rank holds, to check partitioning against numpy."""

import numba
import numpy as np


@numba.njit(cache=True)
def describe(table, row_offset, global_rows):
    return row_offset, table.shape[0], table.sum(), global_rows


def replicated_sum(matrix):
    return float(matrix.sum()), matrix.shape[0]


@numba.njit(cache=True)
def total(big):
    result = 0
    for value in big:
        result += value
    return result


@numba.njit(cache=True)
def counts(samples, bins):
    """Histogram of values in [0, 1) with `bins` bins (an array output)."""
    result = np.zeros(bins, dtype=np.int64)
    for value in samples:
        result[min(int(value * bins), bins - 1)] += 1
    return result


def wrong_kind(samples):
    return "not a number"


def shape_of(table, global_shape):
    return global_shape[0] * 1000 + global_shape[1]


def slow_square(seed, pause):
    """A task that takes `pause` seconds, to have a sweep in flight when it is killed."""
    import time

    time.sleep(pause)
    return seed * seed


def scaled(seed, scale, fold, pause):
    """Deterministic and slow enough to interrupt: (seed * scale) + fold / 10."""
    import time

    time.sleep(pause)
    return seed * scale + fold / 10


def square_or_kill(seed, pid, kill_at_seed):
    """Squares; at `kill_at_seed` it SIGKILLs `pid` (rank 0), to crash a run mid-sweep."""
    import os
    import signal
    import time

    if seed == kill_at_seed:
        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.01)
    return seed * seed


def own_block(big):
    return big.copy()


def square(seed):
    """The cheapest experiment: a sweep of it measures the recording, not the kernel."""
    return seed * seed


def ramp_or_fail(seed):
    """Of the version-2 fixture: an array of one shape, a ragged array and a number; seed 3
    fails with a two-line error."""
    if seed == 3:
        raise ValueError("bad seed 3\nits second line says why")
    return np.arange(4.0) * seed, np.arange(seed % 3 + 1), seed * 0.5


def slow_ramp(seed, pause):
    """A slow array output whose length varies (1 to 3): a sweep to kill while it records."""
    import time

    time.sleep(pause)
    return np.arange(seed % 3 + 1) * 1.0 + seed
