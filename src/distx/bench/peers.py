"""The peers a user would pick instead of distx, run on the sweep case's trivial experiments.

`distx bench --peers` launches each peer as its own documentation shows, on the
experiments of the sweep case (keyfield `seed`, result `trivial(seed)`, every result
recorded), and compares their throughput with distx's:

- libEnsemble: `mpiexec -n RANKS python -m distx.bench.peers libensemble COUNT`. The
  manager on rank 0 hands a given sample (`H0`, no generator) to the workers with
  `give_pregenerated_sim_work`, over MPI comms; the simulation function returns
  `trivial(seed)`, which lands in the manager's history array.
- PyExperimenter: `python -m distx.bench.peers pyexperimenter COUNT JOBS`, in an empty
  folder. A configuration file with keyfield `seed`, result field `result`, SQLite; the
  table is filled from it, then `execute` runs JOBS processes that pull experiments and
  write each result to the table.

Each prints one JSON line: the seconds its run of COUNT experiments took, and how many
ended with the right result recorded.
The peers come with the `bench` extra (`pip install 'distx[bench]'`).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

from distx.bench.benchkernels import trivial

PEERS = {"libEnsemble": "libensemble", "PyExperimenter": "py_experimenter"}
"""Each peer's name and the module it is imported as."""
INSTALL_HINT = "pip install 'distx[bench]'"

PYEXPERIMENTER_CONFIGURATION = """\
PY_EXPERIMENTER:
  n_jobs: {jobs}
  Database:
    provider: sqlite
    database: bench
    table:
      name: trivial
      keyfields:
        seed:
          type: INT
          values: {{start: 0, stop: {count}}}
      resultfields:
        result: DOUBLE
"""


def missing_peers() -> list[str]:
    """The peers that are not installed here."""
    return [name for name, module in PEERS.items() if importlib.util.find_spec(module) is None]


def _trivial_simulation(H, persis_info, sim_specs, libE_info):
    """libEnsemble's simulation function: one experiment of the sweep case."""
    out = np.zeros(1, dtype=sim_specs["out"])
    out["result"] = trivial(H["seed"][0])
    return out, persis_info


def run_libensemble(count: int) -> dict | None:
    """On every rank of an mpiexec run; the figures on rank 0 (the manager), else None."""
    from libensemble import Ensemble
    from libensemble.alloc_funcs.give_pregenerated_work import give_pregenerated_sim_work
    from libensemble.specs import AllocSpecs, ExitCriteria, LibeSpecs, SimSpecs

    sample = np.zeros(count, dtype=[("seed", int), ("sim_id", int), ("sim_started", bool)])
    sample["seed"] = sample["sim_id"] = np.arange(count)
    ensemble = Ensemble(libE_specs=LibeSpecs(comms="mpi"), H0=sample,
                        sim_specs=SimSpecs(sim_f=_trivial_simulation, inputs=["seed"],
                                           outputs=[("result", float)]),
                        alloc_specs=AllocSpecs(alloc_f=give_pregenerated_sim_work),
                        exit_criteria=ExitCriteria(sim_max=count))
    start = time.perf_counter()
    ensemble.run()
    seconds = time.perf_counter() - start
    if not ensemble.is_manager:
        return None
    history = ensemble.H
    done = np.count_nonzero(history["sim_ended"] & (history["result"] == 2.0 * history["seed"]))
    return {"seconds": seconds, "count": int(done)}


def _trivial_experiment(keyfields: dict, result_processor, custom_fields: dict) -> None:
    """PyExperimenter's experiment function: one experiment of the sweep case."""
    result_processor.process_results({"result": trivial(keyfields["seed"])})


def run_pyexperimenter(count: int, jobs: int) -> dict:
    """Fill an SQLite table with COUNT experiments, then execute them in JOBS processes
    (PyExperimenter keeps its database and log in the current folder)."""
    from py_experimenter.experimenter import PyExperimenter

    configuration = Path("pyexperimenter.yml")
    configuration.write_text(PYEXPERIMENTER_CONFIGURATION.format(jobs=jobs, count=count))
    experimenter = PyExperimenter(experiment_configuration_file_path=str(configuration),
                                  use_codecarbon=False, log_file="pyexperimenter.log")
    experimenter.fill_table_from_config()
    start = time.perf_counter()
    experimenter.execute(_trivial_experiment, max_experiments=-1)
    seconds = time.perf_counter() - start
    with sqlite3.connect("bench.db") as database:
        done = database.execute("SELECT COUNT(*) FROM trivial WHERE status = 'done' "
                                "AND result = 2.0 * seed").fetchone()[0]
    return {"seconds": seconds, "count": done}


def main() -> None:
    peer, count = sys.argv[1], int(sys.argv[2])
    if peer == "libensemble":
        figures = run_libensemble(count)
    else:
        figures = run_pyexperimenter(count, int(sys.argv[3]))
    if figures is not None:
        print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
