"""Array outputs of experiments: a block of them, and the layout that stores them.

In the results file each array output is one HDF5 object under /experiment_arrays, with
one entry per row of /experiments (row i is the experiment in row i of /experiments):

- every array of the output has one shape ("fixed"): a dataset of shape
  (experiments, *shape), so `f["experiment_arrays/<output>"][row]` is the array; rows of
  experiments without one hold the fill value (NaN for floats, 0 otherwise);
- shapes differ ("ragged"): a group of `values` (every array flattened, one after
  another), `start` (per row, where its array starts in `values`; -1: none) and `shape`
  (per row, its dimensions, padded with -1 for arrays of fewer dimensions), so
  `values[start[row]:start[row] + size].reshape(dimensions)` is the array.

Holders send the arrays of a batch as one block (stacked, or flattened with their shapes),
rank 0 records it as one block, and a checkpoint writes it as one slice. This module is
numpy only: the holders use it and never import h5py.
"""

from __future__ import annotations

from dataclasses import dataclass

from distx.lazy import numpy as np

KINDS = "biuf"
"""The dtype kinds an array output may have (bool, integers, floats)."""


@dataclass
class ArrayBlock:
    """The arrays of several experiments: `values` stacked (k, *shape) when they share one
    shape, else flattened one after another with `shapes` (k, ndim; -1 padded)."""

    values: np.ndarray
    shapes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values) if self.shapes is None else len(self.shapes)

    @property
    def ragged(self) -> bool:
        return self.shapes is not None

    def starts(self) -> np.ndarray:
        """Where each array of a ragged block starts in `values` (and where it ends)."""
        sizes = np.prod(np.where(self.shapes >= 0, self.shapes, 1), axis=1)
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def arrays(self) -> list[np.ndarray]:
        if not self.ragged:
            return list(self.values)
        starts = self.starts()
        return [ragged_array(self.values, starts[i], self.shapes[i]) for i in range(len(self))]

    def take(self, chosen: np.ndarray) -> ArrayBlock:
        """The arrays at positions (or a mask) `chosen`."""
        if not self.ragged:
            return ArrayBlock(self.values[chosen])
        every = self.arrays()
        return pack([every[i] for i in np.arange(len(self))[chosen].tolist()])


def pack(arrays: list[np.ndarray]) -> ArrayBlock:
    """Arrays as one block: stacked if they share a shape, else flattened."""
    if len({array.shape for array in arrays}) <= 1:
        return ArrayBlock(np.stack(arrays) if arrays else np.zeros((0,)))
    ndim = max(array.ndim for array in arrays)
    shapes = np.full((len(arrays), ndim), -1, dtype=np.int64)
    for row, array in enumerate(arrays):
        shapes[row, :array.ndim] = array.shape
    return ArrayBlock(np.concatenate([array.ravel() for array in arrays]), shapes)


def concatenate(blocks: list[ArrayBlock]) -> ArrayBlock:
    """Blocks one after another (stacked blocks of one shape stay stacked)."""
    if len(blocks) == 1:
        return blocks[0]
    if not any(block.ragged for block in blocks) and \
            len({block.values.shape[1:] for block in blocks}) == 1:
        return ArrayBlock(np.concatenate([block.values for block in blocks]))
    return pack([array for block in blocks for array in block.arrays()])


def ragged_array(values: np.ndarray, start: int, shape: np.ndarray) -> np.ndarray:
    """The array that starts at `start` in `values`, of dimensions `shape` (-1 padded)."""
    dimensions = tuple(int(n) for n in shape if n >= 0)
    return values[int(start):int(start) + int(np.prod(dimensions))].reshape(dimensions)


@dataclass(frozen=True)
class Layout:
    """How an output's arrays are stored: one `shape` (None: ragged) and one dtype."""

    shape: tuple[int, ...] | None
    dtype: np.dtype

    @classmethod
    def of(cls, block: ArrayBlock) -> Layout:
        return cls(None if block.ragged else block.values.shape[1:], block.values.dtype)

    def holds(self, other: Layout) -> bool:
        """Arrays of `other` can be written into storage of this layout as it is."""
        return (self.shape is None or self.shape == other.shape) and \
            np.can_cast(other.dtype, self.dtype, "safe")

    def joined(self, other: Layout) -> Layout:
        """The layout that holds the arrays of both."""
        return Layout(self.shape if self.shape == other.shape else None,
                      np.result_type(self.dtype, other.dtype))


def fill_value(dtype: np.dtype) -> float | int:
    """What a row without an array holds in a fixed layout."""
    return np.nan if dtype.kind == "f" else 0
