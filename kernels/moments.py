"""Moments and histogram of a row-partitioned array, each worker on its own block.

The partial sums are reduced across workers by Remote.GetValue (sum, min, max) on the
coordinator, which derives mean and variance with Run.Evaluate.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def partial_sums(values):
    total = 0.0
    squares = 0.0
    low = np.inf
    high = -np.inf
    for value in values.ravel():
        total += value
        squares += value * value
        low = min(low, value)
        high = max(high, value)
    return values.size, total, squares, low, high


@numba.njit(cache=True)
def histogram(values, bins, low, high):
    counts = np.zeros(bins, dtype=np.int64)
    width = (high - low) / bins
    for value in values.ravel():
        if low <= value < high:
            counts[int((value - low) / width)] += 1
        elif value == high:
            counts[bins - 1] += 1
    return counts
