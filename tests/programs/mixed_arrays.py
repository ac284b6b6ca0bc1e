"""Rank 0 sends rank 1 bodies mixing small arrays (inside the pickled header) and large
ones (raw buffers after it), including one of exactly IN_BAND_BYTES and non-contiguous
views; rank 1 sends each back and rank 0 prints whether every part came back equal."""

import numpy as np
from mpi4py import MPI

from distx.engine.transport import IN_BAND_BYTES, Kind, MPITransport


def same(sent, echoed) -> bool:
    if isinstance(sent, dict):
        return sent.keys() == echoed.keys() and all(same(sent[k], echoed[k]) for k in sent)
    if isinstance(sent, tuple):
        return len(sent) == len(echoed) and all(map(same, sent, echoed))
    if isinstance(sent, np.ndarray):
        return sent.dtype == echoed.dtype and np.array_equal(sent, echoed)
    return sent == echoed


transport = MPITransport(MPI.COMM_WORLD)
bodies = [
    {"small": np.arange(3.0), "large": np.arange(IN_BAND_BYTES // 8 * 3.0)},
    {"edge": np.ones(IN_BAND_BYTES, np.uint8), "below": np.ones(IN_BAND_BYTES - 1, np.uint8)},
    {"view": np.arange(40000.0).reshape(200, 200)[:, 1], "rows": np.eye(300)[::2]},
    {"empty": np.empty(0), "text": "ok", "scalar": np.int64(7), "tuple": (np.arange(5),)},
]
if transport.rank == 0:
    for body in bodies:
        transport.send(1, Kind.VALUE_REPLY, body)
        print("equal" if same(body, transport.receive(timeout=30).body) else
              f"differs: {sorted(body)}", flush=True)
else:
    for _ in bodies:
        transport.send(0, Kind.VALUE_REPLY, transport.receive(timeout=30).body)
transport.close()
