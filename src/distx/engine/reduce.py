"""Combining per-rank or per-partition values into one (Reduce: in Remote.GetValue and
Run.Sweep)."""

from __future__ import annotations

from typing import Any

from distx.lazy import numpy as np


def reduce_values(values: list, how: str, weights: list[float] | None = None) -> Any:
    """Combine per-rank (or per-partition) values: sum, min, max, mean, concat."""
    if how == "concat":
        parts = [np.atleast_1d(np.asarray(value)) for value in values]
        return np.concatenate(parts)
    arrays = [np.asarray(value) for value in values]
    if how == "sum":
        combined = np.sum(arrays, axis=0)
    elif how == "min":
        combined = np.min(arrays, axis=0)
    elif how == "max":
        combined = np.max(arrays, axis=0)
    else:
        combined = np.average(np.stack(arrays).astype(float), axis=0, weights=weights)
    return combined.item() if np.ndim(combined) == 0 else combined
