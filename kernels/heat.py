"""2-D heat diffusion (explicit 5-point stencil) on a row-partitioned grid.

Run.Iterate hands `diffuse` the worker's block plus the neighbours' halo rows (`above`,
`below`; zero rows at the global edges). The grid's outer rows and columns are fixed
(Dirichlet boundary); every inner cell moves towards the mean of its four neighbours.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def diffuse(grid, above, below, alpha):
    rows, columns = grid.shape
    old = np.empty((rows + 2, columns))
    old[1:rows + 1] = grid
    if above.shape[0] > 0:
        old[0] = above[above.shape[0] - 1]
    if below.shape[0] > 0:
        old[rows + 1] = below[0]
    for i in range(rows):
        if (i == 0 and above.shape[0] == 0) or (i == rows - 1 and below.shape[0] == 0):
            continue
        for j in range(1, columns - 1):
            grid[i, j] = old[i + 1, j] + alpha * (
                old[i, j] + old[i + 2, j] + old[i + 1, j - 1] + old[i + 1, j + 1]
                - 4.0 * old[i + 1, j])


def snapshot(grid):
    """The worker's block as it is now (plain Python: a copy to publish)."""
    return grid.copy()


@numba.njit(cache=True)
def total_heat(grid):
    return grid.sum()
