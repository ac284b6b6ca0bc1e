"""Many jobs, one table: --shard slices, distx merge, and the Slurm array's shard numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from distx.errors import UserError
from distx.script.shard import Shard, parse_shard, slurm_shard


@given(size=st.integers(0, 5000), count=st.integers(1, 300))
def test_shards_partition_every_grid(size, count):
    slices = [Shard(index, count).indices(size) for index in range(count)]
    joined = np.concatenate(slices)
    assert (joined == np.arange(size)).all()     # each experiment once, in grid order
    lengths = [len(part) for part in slices]
    assert max(lengths) - min(lengths) <= 1      # balanced within one experiment


def test_shard_text():
    assert parse_shard("2/8", {}) == Shard(2, 8)
    assert parse_shard(" 0 / 1 ", {}) == Shard(0, 1)
    for bad in ("2", "2/", "a/b", "-1/4", "4/4", "0/0", "1/2/3"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad, {})


def array_task(task: int, low: int, high: int, **extra: str) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low),
            "SLURM_ARRAY_TASK_MAX": str(high), **extra}


def test_shard_auto_from_slurm_array_variables():
    assert parse_shard("auto", array_task(3, 0, 3)) == Shard(3, 4)
    assert slurm_shard(array_task(7, 5, 8, SLURM_ARRAY_TASK_COUNT="4")) == Shard(2, 4)
    assert slurm_shard(array_task(8, 0, 12, SLURM_ARRAY_TASK_STEP="4")) == Shard(2, 4)
    with pytest.raises(UserError, match="inside a Slurm job array only"):
        slurm_shard({})
    with pytest.raises(UserError, match="has no shard order"):   # --array=1,5,9
        slurm_shard(array_task(5, 1, 9, SLURM_ARRAY_TASK_COUNT="3"))
