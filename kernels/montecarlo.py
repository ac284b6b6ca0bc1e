"""Monte Carlo estimation of pi.

`estimate_pi` draws its own points from a seed (numba's np.random follows NumPy's legacy
Mersenne Twister, so NumPy reproduces every estimate); `count_inside` counts the points of
a row-partitioned sample array that fall inside a circle, reduced by sum across workers.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def estimate_pi(seed, samples):
    np.random.seed(seed)
    inside = 0
    for _ in range(samples):
        x = np.random.random()
        y = np.random.random()
        if x * x + y * y <= 1.0:
            inside += 1
    return 4.0 * inside / samples


@numba.njit(cache=True)
def count_inside(samples, radius):
    inside = 0
    limit = radius * radius
    for i in range(samples.shape[0]):
        if samples[i, 0] * samples[i, 0] + samples[i, 1] * samples[i, 1] <= limit:
            inside += 1
    return inside


@numba.njit(cache=True)
def local_rows(samples):
    return samples.shape[0]
