"""Kernels that misbehave: crash their process, call sys.exit, or run far too long."""

import os
import sys
import time

import numba


def square(seed, crash_at, sleep_at, pause):
    """seed * seed after `pause` s; crashes its rank at `crash_at`, sleeps an hour at
    `sleep_at` (a kernel stuck in Python)."""
    time.sleep(pause)
    if seed == crash_at:
        os.abort()
    if seed == sleep_at:
        time.sleep(3600)
    return seed * seed


def leave(samples):
    sys.exit(0)


def sleep(samples, seconds):
    time.sleep(seconds)
    return float(seconds)


@numba.njit(cache=True)
def spin(samples, rounds):
    """Holds the GIL for as long as `rounds` says (a kernel stuck in numba code)."""
    total = 0.0
    for step in range(rounds):
        total += (step % 7) * 0.5
    return total


def smooth(grid, above, below, step, seconds):
    """A stencil step that takes `seconds` (step 0 only)."""
    if step == 0:
        time.sleep(seconds)


def huge(seed, at):
    """An integer no float64 can hold at seed `at` (10**400), else the seed."""
    return 10**400 if seed == at else seed


def slow(seed, fast, seconds):
    """Quick below seed `fast`, then `seconds` long (a long kernel to stop a run in)."""
    time.sleep(0.01 if seed < fast else seconds)
    return float(seed)


def nap(seconds):
    """A kernel that takes `seconds`."""
    time.sleep(seconds)
    return float(seconds)
