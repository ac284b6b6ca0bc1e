"""Kernels that fail on chosen experiments, to test retries and error recording."""

import os

import numba


def sometimes(seed, marker):
    """Seed 3 always fails; seed 5 fails on its first attempt only (a marker file remembers)."""
    if seed == 3:
        raise ValueError("bad seed 3")
    if seed == 5:
        flag = os.path.join(marker, "seed5-failed-once")
        if not os.path.exists(flag):
            open(flag, "w").close()
            raise RuntimeError("transient failure of seed 5")
    return seed * 2.0


@numba.njit(cache=True)
def badly_typed(seed, offset):
    return seed + offset + "text"
