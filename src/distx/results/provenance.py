"""What identifies a run: library versions, and fingerprints of the script, kernels and data.

`--resume` compares the fingerprints with those in the results file: a changed grid is
fine (its new experiments are added), anything else that would make old and new results
disagree (the rest of the script, a kernel module, a data file) is refused without --force.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from distx.script.model import Script
from distx.version import __version__ as distx_version


def versions() -> dict[str, str]:
    """Library versions; numba's is read from its metadata: importing it costs 0.2 s."""
    from importlib.metadata import version

    import h5py
    import mpi4py
    from mpi4py import MPI

    return {
        "distx_version": distx_version, "numpy_version": np.__version__,
        "numba_version": version("numba"), "h5py_version": h5py.__version__,
        "hdf5_version": h5py.version.hdf5_version, "mpi4py_version": mpi4py.__version__,
        "mpi_library": library_name(MPI.Get_library_version()),
        "python_version": sys.version.split()[0],
    }


def fault_tolerance(enabled: bool) -> dict[str, str]:
    """Whether a dead worker leaves the run going (Open MPI started with ULFM: `mpirun
    --with-ft ulfm`), as the results file's `fault_tolerant` attribute: yes or no."""
    return {"fault_tolerant": "yes" if enabled else "no"}


def library_name(version: str) -> str:
    """The first line of MPI's library version. Open MPI pads it with NUL bytes, which an
    HDF5 text attribute cannot hold."""
    return version.replace("\x00", "").strip().splitlines()[0].strip()


def new_run_id() -> str:
    import secrets

    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def fingerprints(script: Script, kernels: str) -> dict[str, str]:
    """`kernels` is the fingerprint of the code shipped to the ranks (engine/shipping.py):
    the modules the script names and the modules of the kernels folder they import."""
    return {"script": _script_fingerprint(script), "kernels": kernels,
            "data": _data_fingerprint(script)}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()


def _script_fingerprint(script: Script) -> str:
    """The parsed script without its Experiments and Output (comments do not count)."""
    document = {key: value for key, value in script.source.data.items()
                if key not in ("Experiments", "Output")}
    return _digest(_canonical(document))


def _data_fingerprint(script: Script) -> str:
    parts = [_canonical(script.source.data.get("Data", {}))]
    for spec in script.data.values():
        if spec.file is not None:
            path = Path(spec.file.partition(":")[0])
            path = path if path.is_absolute() else script.folder / path
            parts.append(_file_digest(path).encode())
    return _digest(*parts)


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 22), b""):
            hasher.update(block)
    return hasher.hexdigest()
