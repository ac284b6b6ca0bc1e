"""The journal beside a results file: every change since the file's last checkpoint.

`<results>.journal` is append-only. Each record is framed as

    magic b"DXJ1" | u32 payload length | u32 CRC32 of the payload | payload

and its payload is a u32 header length, a JSON header, then the raw bytes of the arrays
the header describes (numpy dtype descriptions, shapes, offsets; text columns as JSON
lists). Nothing is unpickled: reading a crafted journal can only yield wrong numbers or
be refused, never run code. Every record carries its sequence number and the `file_id`
of the results file it belongs to. A torn or corrupt tail (a writer killed mid-record, a
full disk) ends the journal at the last whole record.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"DXJ1"
FRAME = struct.Struct("<4sII")
HEADER_LENGTH = struct.Struct("<I")
MAX_RECORD = 1 << 31
WRITE_PARTS = 512   # buffers per writev call (IOV_MAX is 1024 on Linux)


@dataclass
class Record:
    """One change to the results file: an operation, its JSON-able fields and arrays."""

    op: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seq: int = 0


def journal_path(results: Path) -> Path:
    return results.with_name(results.name + ".journal")


# ----- encoding ----------------------------------------------------------------------------
def encode(record: Record, file_id: str) -> bytes:
    """The framed bytes of one record."""
    return b"".join(encoded_parts(record, file_id))


def encoded_parts(record: Record, file_id: str) -> list[bytes | memoryview]:
    """The framed record as buffers to write one after the other: the arrays' bytes are
    not copied into one string (a sweep journals tens of megabytes a second)."""
    described, chunks, offset = {}, [], 0
    for name, array in record.arrays.items():
        columns = {}
        for column, values in _columns(array):
            if values.dtype.kind == "O":
                texts = values.tolist()
                columns[column] = {"text": [str(v) for v in texts]} if any(texts) else \
                    {"empty": len(texts)}
                continue
            # A column of one repeated value (host, status, run of a batch) is stored once.
            repeated = bool(values.size > 1 and values.flat[0] == values.flat[-1]
                            and (values == values.flat[0]).all())  # the ends: most at once
            raw = _raw(values.flat[:1] if repeated else values)
            columns[column] = {"descr": _descr(values.dtype),
                               "offset": offset, "nbytes": len(raw), "repeated": repeated}
            chunks.append(raw)
            offset += len(raw)
        described[name] = {"shape": list(array.shape), "columns": columns,
                           "descr": _descr(_text_free(array.dtype))
                           if array.dtype.names else None}
    header = json.dumps({"op": record.op, "seq": record.seq, "file_id": file_id,
                         "fields": record.fields, "arrays": described}).encode()
    payload = [HEADER_LENGTH.pack(len(header)), header, *chunks]
    crc = 0
    for part in payload:
        crc = zlib.crc32(part, crc)
    return [FRAME.pack(MAGIC, sum(len(part) for part in payload), crc), *payload]


@functools.lru_cache(maxsize=256)
def _descr(dtype: np.dtype) -> Any:
    """numpy's description of a dtype, for the header: worked out once per dtype (it took
    most of the ~17 us a one-row record cost, and a milestone is two such records)."""
    return np.lib.format.dtype_to_descr(dtype)


def _raw(values: np.ndarray) -> memoryview:
    """The bytes of an array of fixed-size items, without a copy when it is contiguous."""
    return memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


def _columns(array: np.ndarray) -> Iterator[tuple[str | None, np.ndarray]]:
    if array.dtype.names:
        for name in array.dtype.names:
            yield name, array[name]
    else:
        yield None, array


def _text_free(dtype: np.dtype) -> np.dtype:
    """A structured dtype with its text (object) fields marked, for the header."""
    return np.dtype([(name, "O" if dtype[name].kind == "O" else dtype[name])
                     for name in dtype.names])


def decode(payload: bytes) -> tuple[Record, str]:
    """A record and the file_id it belongs to; ValueError if it does not parse."""
    (length,) = HEADER_LENGTH.unpack_from(payload)
    header = json.loads(payload[HEADER_LENGTH.size:HEADER_LENGTH.size + length])
    data = memoryview(payload)[HEADER_LENGTH.size + length:]
    arrays = {name: _decode_array(spec, data) for name, spec in header["arrays"].items()}
    record = Record(header["op"], header["fields"], arrays, int(header["seq"]))
    return record, str(header["file_id"])


def _decode_array(spec: dict, data: memoryview) -> np.ndarray:
    shape = tuple(int(n) for n in spec["shape"])
    columns = {name: _decode_column(column, data, shape)
               for name, column in spec["columns"].items()}
    if spec["descr"] is None:
        return columns["null"]
    dtype = _descr_to_dtype(spec["descr"], allow_objects=True)
    array = np.empty(shape, dtype=dtype)
    for name in dtype.names:
        array[name] = columns[name]
    return array


def _decode_column(column: dict, data: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    if "empty" in column:
        return np.full(shape, "", dtype=object)
    if "text" in column:
        values = np.empty(len(column["text"]), dtype=object)
        values[:] = [str(v) for v in column["text"]]
        return values.reshape(shape)
    dtype = _descr_to_dtype(column["descr"], allow_objects=False)
    start, length = int(column["offset"]), int(column["nbytes"])
    if start < 0 or start + length > len(data):
        raise ValueError("array outside its record")
    values = np.frombuffer(data[start:start + length], dtype=dtype)
    if column.get("repeated"):
        values = np.repeat(values[:1], int(np.prod(shape)))
    return values.reshape(shape)


def _descr_to_dtype(descr: Any, allow_objects: bool) -> np.dtype:
    dtype = np.lib.format.descr_to_dtype(descr if isinstance(descr, str) else
                                         [tuple(item) for item in descr])
    if dtype.hasobject and not allow_objects:
        raise ValueError("object data in a journal column")
    return dtype


# ----- reading -----------------------------------------------------------------------------
def read(path: Path, file_id: str | None = None) -> list[Record]:
    """The whole records of a journal in order (of `file_id`'s file, if given); a torn or
    corrupt record ends it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records, position = [], 0
    while position + FRAME.size <= len(data):
        magic, length, crc = FRAME.unpack_from(data, position)
        payload = data[position + FRAME.size:position + FRAME.size + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            record, owner = decode(payload)
        except (ValueError, KeyError, TypeError, struct.error):
            break
        if file_id is None or owner == file_id:
            records.append(record)
        position += FRAME.size + length
    return records


def after(records: list[Record], seq: int) -> list[Record] | None:
    """The records after checkpoint `seq`, or None if some are missing (the journal was
    truncated by a newer checkpoint than the file read: read both again)."""
    newer = [record for record in records if record.seq > seq]
    if newer and newer[0].seq != seq + 1:
        return None
    return newer


# ----- writing -----------------------------------------------------------------------------
class JournalWriter:
    """Appends records to the journal; `sync()` makes them durable (fsync)."""

    def __init__(self, path: Path, file_id: str) -> None:
        self.path = path
        self.file_id = file_id
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.unsynced = False

    def append(self, records: list[Record]) -> None:
        parts = [part for record in records for part in encoded_parts(record, self.file_id)]
        for first in range(0, len(parts), WRITE_PARTS):
            group = parts[first:first + WRITE_PARTS]
            if os.writev(self.fd, group) != sum(len(part) for part in group):
                # a short write to a regular file: the disk is full (the torn record ends
                # the journal when it is read; nothing may be appended after it)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.unsynced = True

    def sync(self) -> None:
        if self.unsynced:
            os.fsync(self.fd)
            self.unsynced = False

    def truncate(self) -> None:
        """After a checkpoint that holds every record written so far."""
        os.ftruncate(self.fd, 0)
        self.unsynced = False

    def close(self, remove: bool) -> None:
        os.close(self.fd)
        if remove:
            self.path.unlink(missing_ok=True)
