"""Kernels of the benchmark that are not examples: a trivial sweep task and a numba loop.

The example kernels the benchmark also runs (`estimate_pi`, `count_inside`, `diffuse`) are
imported from the shipped examples (kernels/ of a checkout, or share/distx/examples of an
installed wheel), so the benchmark measures exactly what the examples run.
"""

import numba
import numpy as np


def trivial(seed):
    return seed * 2.0


@numba.njit(cache=True, fastmath=True)
def sum_squares(values):
    total = 0.0
    for value in values:
        total += value * value
    return total


def ramp(seed):
    """A 50-element array per experiment: the array-output sweep."""
    return np.arange(50.0) + seed


def ramp_end(seed):
    """The same work as `ramp`, returning one number of it: what the array sweep is
    compared with, so that the ratio is the cost of the array output, not of the two
    numpy calls that make it (`trivial` does neither)."""
    return float((np.arange(50.0) + seed)[-1])
