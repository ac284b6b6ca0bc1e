"""Kernels that print (Python and numba) and fail with a multi-line cause, for the
results a user reads: show, status, timeline, trace, captured output."""

import numba


def measure(seed, scale):
    """A sweep kernel: prints a line per call; seed 3 fails with a two-line message."""
    print(f"measuring seed {seed} scale {scale}")
    if seed == 3:
        raise ValueError(f"bad seed {seed}\nsecond line of the cause")
    return seed * scale, seed + scale


@numba.njit(cache=True)
def shout(points):
    """numba's print writes to file descriptor 1 from compiled code."""
    print("numba says", points.shape[0])
    return points.shape[0]


def fail(points):
    raise RuntimeError("the probe broke\nits second line says why")
