"""distx: distributed experiments on MPI, described in one YAML script, results in one HDF5 file.

`distx.load(path)` gives the results as a pandas DataFrame. Importing distx stays cheap
(every rank of a run imports it): pandas and h5py are imported by `load` only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from distx.version import __version__

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["__version__", "load"]


def load(paths: str | Path | Iterable[str | Path], table: str = "experiments", *,
         arrays: bool = False) -> pd.DataFrame:
    """A table of a results file (or the union of several: a list, or a pattern such as
    'shard-*.h5') as a pandas DataFrame, also while a run writes it.

    table: experiments (default), attempts, milestones, values, tasks, logs, runs, errors.
    arrays: array outputs and published arrays as numpy arrays in their cells.
    Text is str, times are UTC timestamps, `status` is str (`df[df.status == "done"]`).
    """
    from distx.results.frames import load as load_table

    return load_table(paths, table, arrays=arrays)
