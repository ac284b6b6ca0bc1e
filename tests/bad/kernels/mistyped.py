"""numba kernels that cannot compile for the types a script gives them."""

import numba


@numba.njit(cache=True)
def count_above(samples, threshold):
    total = 0
    for value in samples:
        if value > threshold:
            total += 1
    return total


@numba.njit(cache=True)
def scaled(seed, scale):
    return seed ** 0.5 / scale
