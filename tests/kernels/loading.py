"""Kernels of tests/scripts/loading.yml: what `distx.load` and pandas read back."""

import numpy as np


def measure(seed, method):
    """A number and an array per experiment; seed 2 fails with a two-line cause."""
    if seed == 2:
        raise ValueError(f"bad seed {seed}\nsecond line of the cause")
    return seed * len(method) + 0.5, np.arange(seed + 1, dtype=np.int64)
