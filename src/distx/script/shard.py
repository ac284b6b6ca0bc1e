"""Shards: the I-th of N disjoint slices of a sweep's experiments, one per job of an array.

Shard I of N holds the experiments whose grid index lies in the contiguous block
[I*S//N, (I+1)*S//N) of the S experiments of the grid (in the grid's own order, the last
keyfield fastest). The blocks cover every index exactly once, and their sizes differ by at
most one. The rule depends only on the grid size, so every array task computes its block
on its own, and ids stay those of the whole grid: shard files merge into one table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from distx.errors import UserError
from distx.lazy import numpy as np

SHARD_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
SHARD_FIX = ("write --shard I/N with 0 <= I < N (e.g. --shard 0/4), or --shard auto inside a "
             "Slurm job array")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def file_label(self) -> str:
        """What a shard's default results file name carries: `shard-2-of-8`."""
        return f"shard-{self.index}-of-{self.count}"

    def indices(self, size: int) -> np.ndarray:
        """The grid indices of this shard's experiments, in grid order."""
        return np.arange(self.index * size // self.count,
                         (self.index + 1) * size // self.count, dtype=np.int64)


def parse_shard(text: str, environment: Mapping[str, str]) -> Shard:
    """`--shard I/N`, or `--shard auto` from a Slurm job array's variables."""
    if text.strip() == "auto":
        return slurm_shard(environment)
    match = SHARD_TEXT.fullmatch(text)
    if not match:
        raise UserError(f"--shard {text!r} is neither I/N nor auto", fix=SHARD_FIX)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UserError(f"--shard {text.strip()}: the shard number must be at least 0 and "
                        f"less than the number of shards", fix=SHARD_FIX)
    return Shard(index, count)


def slurm_shard(environment: Mapping[str, str]) -> Shard:
    """This array task's shard: its position among the array's task ids.

    Slurm numbers array tasks SLURM_ARRAY_TASK_MIN..MAX, with a step
    (SLURM_ARRAY_TASK_STEP) for `--array=0-15:4`; the shard is the position in that range,
    and the number of shards is SLURM_ARRAY_TASK_COUNT (or the size of the range).
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX")
    try:
        task, low, high = (int(environment[name]) for name in names)
        step = int(environment.get("SLURM_ARRAY_TASK_STEP") or 1)
    except KeyError:
        raise UserError("--shard auto works inside a Slurm job array only (no "
                        "SLURM_ARRAY_TASK_ID, _MIN and _MAX in the environment)",
                        fix="submit with sbatch --array=0-N, or pass --shard I/N") from None
    except ValueError:
        raise UserError("--shard auto: the SLURM_ARRAY_TASK_* variables are not numbers",
                        fix="pass --shard I/N") from None
    size = (high - low) // max(step, 1) + 1
    count = int(environment.get("SLURM_ARRAY_TASK_COUNT") or size)
    index, offset = divmod(task - low, max(step, 1))
    if offset or count != size or not 0 <= index < count:
        raise UserError(f"--shard auto: array task {task} is not one of a range "
                        f"{low}-{high} of {count} tasks (an --array list like 1,5,9 has no "
                        "shard order)", fix="submit with --array=A-B (or A-B:STEP), or "
                        "pass --shard I/N")
    return Shard(index, count)
