"""Arrays of the script's Data section: made or loaded on rank 0, distributed once.

`Partition: rows` gives each holder a contiguous block of rows, balanced to within one row;
`Partition: replicate` gives every holder the whole array. Blocks travel as raw buffers
(point-to-point `Isend`), replicated arrays with a chunked `Bcast`; neither is pickled.
Holders keep their partitions for the whole run, so kernels reuse them without copies.
"""

from __future__ import annotations

import math
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distx.engine.protocol import DataBlock, Kind
from distx.engine.transport import Message, MPITransport
from distx.host import available_memory
from distx.lazy import numpy as np
from distx.script.model import REPLICATE, ROWS, DataSpec, Script


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
    if spec.generate is not None:
        return _generate(spec, script)
    return _with_source(spec, script, lambda source: np.array(source[()]))


def check_data(script: Script) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Validation without loading: files exist, hold a numeric array, rows to partition,
    generation settings in range, and everything fits in rank 0's memory.

    Returns each array's dtype and shape (what kernels will be given)."""
    described = {}
    for name, spec in script.data.items():
        if spec.file is not None:
            described[name] = _with_source(spec, script,
                                           lambda source: (source.dtype, tuple(source.shape)))
        else:
            described[name] = (_check_generation(spec, script), tuple(spec.generate["Shape"]))
    _check_memory(script, described)
    return described


def _check_memory(script: Script, described: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
    """Rank 0 makes or loads every array before distributing it: their bytes (and the
    float64 buffer a generator fills before converting to DType) must fit in memory."""
    total, available = 0, available_memory()
    for name, (dtype, shape) in described.items():
        spec = script.data[name]
        need = math.prod(shape) * dtype.itemsize
        if spec.generate is not None and spec.generate["Distribution"] != "integers" \
                and dtype != np.float64:
            need += math.prod(shape) * 8
        total += need
        if total > available:
            where = (*spec.where, "Generate", "Shape") if spec.generate is not None \
                else (*spec.where, "File")
            raise script.error(where, f"array '{name}' of shape {list(shape)} and dtype "
                               f"{dtype} needs {_gigabytes(need)} (all arrays so far "
                               f"{_gigabytes(total)}), more than the {_gigabytes(available)} "
                               "of memory available on this host",
                               "use a smaller Shape or a smaller DType")


def _gigabytes(count: int) -> str:
    if count < 10**21:
        return f"{count / 1e9:,.1f} GB"
    return f"over 10^{len(str(count // 10**9)) - 1} GB"  # beyond what a float holds


def _check_generation(spec: DataSpec, script: Script) -> np.dtype:
    """The DType, after checking that the distribution's settings make sense for it."""
    settings = spec.generate
    dtype = _generation_dtype(spec, script)
    where = (*spec.where, "Generate")
    for key in ("Low", "High", "Mean", "Std"):
        if key in settings and not math.isfinite(settings[key]):
            raise script.error((*where, key), f"{key} is {settings[key]}: it must be finite")
    distribution = settings["Distribution"]
    if distribution == "normal" and settings.get("Std", 1.0) < 0:
        raise script.error((*where, "Std"), f"Std is {settings['Std']}: it must be >= 0")
    low, high = _bounds(settings)
    if distribution == "uniform" and high < low:
        raise script.error((*where, "High"), f"High {high} is below Low {low}",
                           "give Low <= High")
    if distribution == "integers":
        _check_integer_bounds(script, where, dtype, low, high)
    return dtype


def _bounds(settings: dict) -> tuple[float, float]:
    integers = settings["Distribution"] == "integers"
    return (settings.get("Low", 0 if integers else 0.0),
            settings.get("High", INTEGERS_HIGH if integers else 1.0))


def _check_integer_bounds(script: Script, where: tuple, dtype: np.dtype, low: Any,
                          high: Any) -> None:
    """`integers` draws from [Low, High): whole numbers, Low < High, within the DType."""
    for key, value in (("Low", low), ("High", high)):
        if not isinstance(value, int):
            raise script.error((*where, key), f"{key} is {value}: integers need whole numbers")
    if high <= low:
        raise script.error((*where, "High"), f"High {high} is not above Low {low} (High is "
                           "excluded)", "give Low < High")
    info = np.iinfo(dtype)
    if low < info.min or high - 1 > info.max:
        raise script.error(where, f"{dtype} holds {info.min} to {info.max}, not values from "
                           f"{low} to {high - 1}", "use a wider DType or narrower bounds")


def _generation_dtype(spec: DataSpec, script: Script) -> np.dtype:
    settings = spec.generate
    where = (*spec.where, "Generate", "DType")
    integers = settings["Distribution"] == "integers"
    try:
        dtype = np.dtype(settings.get("DType", "int64" if integers else "float64"))
    except (TypeError, ValueError):
        raise script.error(where, f"unknown dtype {settings['DType']!r}",
                           "use e.g. float64, float32, int64, int32, uint8") from None
    if integers and dtype.kind not in "iu":
        raise script.error(where, "integers need an integer DType", "use e.g. int64 or uint8")
    if dtype.kind not in "biuf":
        raise script.error(where, f"dtype {dtype} is not numeric", "use e.g. float64 or int64")
    return dtype


INTEGERS_HIGH = 100  # the default High of `integers` (excluded)


def _generate(spec: DataSpec, script: Script) -> np.ndarray:
    settings = spec.generate
    dtype = _generation_dtype(spec, script)
    rng = np.random.default_rng(settings.get("Seed", 0))
    shape = tuple(settings["Shape"])
    distribution = settings["Distribution"]
    if distribution == "uniform":
        return rng.uniform(settings.get("Low", 0.0), settings.get("High", 1.0), shape) \
            .astype(dtype, copy=False)
    if distribution == "normal":
        return rng.normal(settings.get("Mean", 0.0), settings.get("Std", 1.0), shape) \
            .astype(dtype, copy=False)
    low, high = _bounds(settings)
    return rng.integers(low, high, shape, dtype=dtype)


def _with_source(spec: DataSpec, script: Script, use: Callable) -> Any:
    """Open the array a File names, check it, and return `use(array_like)`.

    `.npy` files are memory-mapped (so checking reads only the header) and never unpickled;
    HDF5 datasets are checked by their metadata before anything is read.
    """
    where = (*spec.where, "File")
    file_part, colon, dataset = spec.file.partition(":")
    path = Path(file_part) if Path(file_part).is_absolute() else script.folder / file_part
    _check_regular_file(script, where, path)
    if path.suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as error:
            raise script.error(where, f"{path} is not a plain numeric .npy array ({error})",
                               "save it with numpy.save from a numeric array") from None
        _check_array(spec, script, array.shape, array.dtype, str(path))
        return use(array)
    if not colon or not dataset:
        raise script.error(where, f"'{spec.file}' names no dataset",
                           "write file.h5:/path/to/dataset, or use a .npy file")
    import h5py

    try:
        source = h5py.File(path, "r")
    except OSError as error:
        raise script.error(where, f"{path} is not a readable HDF5 file ({error})",
                           "give an HDF5 file (file.h5:/dataset) or a .npy file") from None
    with source:
        try:
            node = source.get(dataset)
        except (KeyError, RuntimeError, OSError) as error:  # e.g. a loop of soft links
            raise script.error(where, f"{path} cannot open {dataset}: {error}",
                               "name a dataset, not a broken or looping link") from None
        if not isinstance(node, h5py.Dataset):
            names: list[str] = []
            source.visititems(lambda name, item: names.append("/" + name)
                              if isinstance(item, h5py.Dataset) else None)
            raise script.error(where, f"{path} has no dataset {dataset}",
                               f"datasets in the file: {', '.join(names) or 'none'}")
        _check_array(spec, script, node.shape, node.dtype, f"{path}:{dataset}")
        return use(node)


def _check_regular_file(script: Script, where: tuple, path: Path) -> None:
    """The data file is a regular file: say what it is otherwise."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise script.error(where, f"data file {path} does not exist",
                           "check the path (relative paths start at the script's folder)") \
            from None
    except OSError as error:
        raise script.error(where, f"cannot read data file {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a character device" \
            if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) \
            else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" \
            if stat.S_ISSOCK(mode) else "not a regular file"
        raise script.error(where, f"data file {path} is {kind}, not a file",
                           "give a .npy file or file.h5:/dataset")


def _check_array(spec: DataSpec, script: Script, shape: tuple, dtype: np.dtype,
                 origin: str) -> None:
    where = (*spec.where, "File")
    if dtype.kind not in "biuf":
        raise script.error(where, f"{origin} has dtype {dtype}, not a numeric array",
                           "kernels take arrays of numbers (bool, int, uint, float)")
    if spec.partition == ROWS and len(shape) == 0:
        raise script.error((*spec.where, "Partition"), f"array '{spec.name}' is "
                           "0-dimensional and has no rows to partition",
                           "use Partition: replicate")


def layouts(arrays: dict[str, np.ndarray], specs: dict[str, DataSpec]) -> list[Layout]:
    return [Layout(name, array.shape, array.dtype.str, specs[name].partition)
            for name, array in arrays.items()]


def split_locally(arrays: dict[str, np.ndarray], layout: list[Layout],
                  holders: tuple[int, ...]) -> dict[int, dict[str, Partition]]:
    """Partitions of a single-process run: views of the arrays, no copies."""
    per_rank: dict[int, dict[str, Partition]] = {rank: {} for rank in holders}
    for item in layout:
        array = arrays[item.name]
        if item.mode == REPLICATE:
            for rank in holders:
                per_rank[rank][item.name] = Partition(item.name, array, 0, item.shape, item.mode)
        else:
            for rank, (start, stop) in zip(holders, row_blocks(item.shape[0], len(holders))):
                per_rank[rank][item.name] = Partition(item.name, array[start:stop], start,
                                                      item.shape, item.mode)
    return per_rank


def distribute(transport: MPITransport, layout: list[Layout], holders: tuple[int, ...],
               arrays: dict[str, np.ndarray] | None,
               dispatch: Callable[[Message], None]) -> dict[str, Partition]:
    """Collective: every rank calls it; returns this rank's partitions.

    Messages of other kinds that arrive meanwhile (milestones of ranks already started)
    are handed to `dispatch`.
    """
    rank = transport.rank
    mine: dict[str, Partition] = {}
    for item in layout:
        if item.mode == REPLICATE:
            array = arrays[item.name] if rank == 0 else np.empty(item.shape, item.dtype)
            transport.broadcast_array(array)
            if rank in holders:
                mine[item.name] = Partition(item.name, array, 0, item.shape, item.mode)
            continue
        blocks = row_blocks(item.shape[0], len(holders))
        if rank == 0:
            for holder, (start, stop) in zip(holders, blocks):
                transport.send(holder, Kind.DATA,
                               DataBlock(item.name, start, arrays[item.name][start:stop]))
        elif rank in holders:
            received = _receive_data(transport, dispatch)
            if received.array != item.name:
                raise RuntimeError(f"rank {rank} expected array {item.name}, "
                                   f"got {received.array}")
            mine[item.name] = Partition(item.name, received.block, received.offset,
                                        item.shape, item.mode)
    return mine


def _receive_data(transport: MPITransport, dispatch: Callable[[Message], None]) -> DataBlock:
    while True:
        message = transport.receive(timeout=None)
        if message.kind == Kind.DATA:
            return message.body
        dispatch(message)
