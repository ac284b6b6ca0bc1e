"""Arrays of the script's Data section: made or loaded on rank 0, distributed once.

`Partition: rows` gives each holder a contiguous block of rows, balanced to within one row;
`Partition: replicate` gives every holder the whole array. Blocks travel as raw buffers
(point-to-point `Isend`), replicated arrays with a chunked `Bcast`; neither is pickled.
Holders keep their partitions for the whole run, so kernels reuse them without copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distx.errors import UserError
from distx.transport import Kind, Message, Transport

if TYPE_CHECKING:
    from distx.script import DataSpec, Script


@dataclass
class Partition:
    name: str
    array: np.ndarray
    offset: int
    global_shape: tuple[int, ...]
    mode: str


@dataclass(frozen=True)
class Layout:
    """What every rank must know of an array before it is distributed."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    mode: str


def row_blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of each of `parts` contiguous blocks; sizes differ by at most one."""
    base, extra = divmod(rows, parts)
    blocks, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        blocks.append((start, stop))
        start = stop
    return blocks


def materialize(spec: DataSpec, script: Script) -> np.ndarray:
    """Generate or load one array on rank 0 (errors name the script line)."""
    array = _generate(spec, script) if spec.generate is not None else _load(spec, script)
    if spec.partition == "rows" and array.ndim == 0:
        raise script.error((*spec.where, "Partition"), f"array '{spec.name}' is 0-dimensional "
                           "and has no rows to partition", "use Partition: replicate")
    return array


def _generate(spec: DataSpec, script: Script) -> np.ndarray:
    settings = spec.generate
    where = (*spec.where, "Generate")
    rng = np.random.default_rng(settings.get("Seed", 0))
    shape = tuple(settings["Shape"])
    try:
        dtype = np.dtype(settings.get("DType", "int64" if settings["Distribution"] == "integers"
                                      else "float64"))
    except TypeError:
        raise script.error((*where, "DType"), f"unknown dtype {settings['DType']!r}",
                           "use e.g. float64, float32, int64, int32, uint8") from None
    distribution = settings["Distribution"]
    if distribution == "uniform":
        return rng.uniform(settings.get("Low", 0.0), settings.get("High", 1.0), shape) \
            .astype(dtype, copy=False)
    if distribution == "normal":
        return rng.normal(settings.get("Mean", 0.0), settings.get("Std", 1.0), shape) \
            .astype(dtype, copy=False)
    if dtype.kind not in "iu":
        raise script.error((*where, "DType"), "integers need an integer DType")
    return rng.integers(settings.get("Low", 0), settings.get("High", 100), shape, dtype=dtype)


def _load(spec: DataSpec, script: Script) -> np.ndarray:
    where = (*spec.where, "File")
    text = spec.file
    file_part, colon, dataset = text.partition(":")
    path = Path(file_part)
    if not path.is_absolute():
        path = script.folder / path
    if not path.is_file():
        raise script.error(where, f"data file {path} does not exist",
                           "check the path (relative paths start at the script's folder)")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False, mmap_mode=None)
        except ValueError as error:
            raise script.error(where, f"{path} is not a plain .npy array: {error}") from None
    import h5py

    if not colon or not dataset:
        raise script.error(where, f"'{text}' names no dataset",
                           "write file.h5:/path/to/dataset, or use a .npy file")
    try:
        with h5py.File(path, "r") as source:
            if dataset not in source or not isinstance(source[dataset], h5py.Dataset):
                names: list[str] = []
                source.visit(lambda name: names.append("/" + name)
                             if isinstance(source[name], h5py.Dataset) else None)
                raise script.error(where, f"{path} has no dataset {dataset}",
                                   f"datasets in the file: {', '.join(names) or 'none'}")
            array = source[dataset][()]
    except OSError as error:
        raise script.error(where, f"{path} is not a readable HDF5 file ({error})",
                           "give an HDF5 file (file.h5:/dataset) or a .npy file") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise script.error(where, f"dataset {dataset} of {path} has dtype "
                           f"{getattr(array, 'dtype', type(array))}, not a numeric array",
                           "kernels take numeric arrays")
    return array


def layouts(arrays: dict[str, np.ndarray], specs: dict[str, DataSpec]) -> list[Layout]:
    return [Layout(name, array.shape, array.dtype.str, specs[name].partition)
            for name, array in arrays.items()]


def split_locally(arrays: dict[str, np.ndarray], layout: list[Layout],
                  holders: tuple[int, ...]) -> dict[int, dict[str, Partition]]:
    """Partitions of a single-process run: views of the arrays, no copies."""
    per_rank: dict[int, dict[str, Partition]] = {rank: {} for rank in holders}
    for item in layout:
        array = arrays[item.name]
        if item.mode == "replicate":
            for rank in holders:
                per_rank[rank][item.name] = Partition(item.name, array, 0, item.shape, item.mode)
        else:
            for rank, (start, stop) in zip(holders, row_blocks(item.shape[0], len(holders))):
                per_rank[rank][item.name] = Partition(item.name, array[start:stop], start,
                                                      item.shape, item.mode)
    return per_rank


def distribute(transport: Transport, layout: list[Layout], holders: tuple[int, ...],
               arrays: dict[str, np.ndarray] | None,
               dispatch: Callable[[Message], None]) -> dict[str, Partition]:
    """Collective: every rank calls it; returns this rank's partitions.

    Messages of other kinds that arrive meanwhile (milestones of ranks already started)
    are handed to `dispatch`.
    """
    rank = transport.rank
    mine: dict[str, Partition] = {}
    for item in layout:
        if item.mode == "replicate":
            array = arrays[item.name] if rank == 0 else np.empty(item.shape, item.dtype)
            transport.broadcast_array(array)
            if rank in holders:
                mine[item.name] = Partition(item.name, array, 0, item.shape, item.mode)
            continue
        blocks = row_blocks(item.shape[0], len(holders))
        if rank == 0:
            for holder, (start, stop) in zip(holders, blocks):
                transport.send(holder, Kind.DATA, (item.name, start, arrays[item.name][start:stop]))
        elif rank in holders:
            name, offset, block = _receive_data(transport, dispatch)
            if name != item.name:
                raise RuntimeError(f"rank {rank} expected array {item.name}, got {name}")
            mine[name] = Partition(name, block, offset, item.shape, item.mode)
    return mine


def _receive_data(transport: Transport, dispatch: Callable[[Message], None]) -> tuple:
    while True:
        message = transport.receive(timeout=None)
        if message.kind == Kind.DATA:
            return message.body
        dispatch(message)


def check_data_files(script: Script) -> None:
    """Validation without loading: the files named in Data exist."""
    for spec in script.data.values():
        if spec.file is not None:
            path = Path(spec.file.partition(":")[0])
            path = path if path.is_absolute() else script.folder / path
            if not path.is_file():
                raise UserError(f"data file {path} does not exist", file=script.source.file,
                                line=script.source.line((*spec.where, "File")),
                                fix="check the path (relative paths start at the script's "
                                "folder)")
