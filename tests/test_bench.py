"""`distx bench --quick` as a smoke test: every case runs and reports figures.

The figures themselves are never asserted (they depend on the machine and its load);
README.md has the table from a full run and how to reproduce it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import mpiexec

from distx.bench.harness import Bench, medians_in_turns
from distx.bench.simulation import simulate
from distx.engine.sweep import Sweep

CASES = ["milestone latency", "GetValue scalar", "GetValue 8 MiB", "Partition rows",
         "kernel: sum of squares", "kernel: Monte Carlo pi", "end-to-end pi sweep",
         "CPU-bound sweep on 8 ranks", "start-up", "sweep 20000 recorded experiments",
         "sweep 20000 experiments of 50-element arrays",
         "Run.Iterate heat step 400x512, 2 ranks", "Run.Iterate heat step 400x512, 3 ranks",
         "Run.Iterate heat step 400x512, 4 ranks"]

WITHOUT_PEERS = ("import sys; sys.modules.update(libensemble=None, py_experimenter=None); "
                 "from distx.cli import main; sys.exit(main())")
"""`distx` in a Python where the peers cannot be imported (as without the bench extra)."""


def test_quick_bench_reports_every_case(tmp_path):
    """With --peers but no peers installed: one line says how to get them, the rest runs."""
    report = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-c", WITHOUT_PEERS, "bench", "--quick",
                             "--peers", "--json", str(report)], capture_output=True,
                            text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    hints = [line for line in result.stderr.splitlines() if "pip install" in line]
    assert hints == ["distx bench: --peers needs libEnsemble and PyExperimenter: "
                     "pip install 'distx[bench]'; running the other cases"]
    figures = json.loads(report.read_text())
    names = [row["case"] for row in figures["rows"]]
    for case in CASES:
        assert any(name.startswith(case) for name in names), case
    for row in figures["rows"]:
        assert row["distx"] > 0 and row["reference"] > 0 and row["ratio"] > 0, row
    assert any("coordinator cost per recorded experiment" in note for note in figures["notes"])
    assert any("array sweep file" in note for note in figures["notes"])
    assert any("array sweep against the trivial kernel" in note for note in figures["notes"])
    assert "ratio" in result.stdout and "target" in result.stdout


def test_sides_are_measured_in_turns_and_their_medians_taken():
    calls = []

    def side(name: str, values: list):
        return lambda: (calls.append(name), values.pop(0))[1]
    medians = medians_in_turns(3, side("a", [5.0, 1.0, 3.0]),
                               side("b", [(1, 9), (2, 8), (3, 7)]))
    assert calls == ["a", "b"] * 3
    assert medians == [3.0, (2, 8)]


def test_the_coordinator_simulation_records_every_experiment(tmp_path):
    """Rank 0's real sweep, table and store against simulated holders (in process)."""
    for holders in (1, 16):
        simulated = simulate(holders, 2000, folder=tmp_path)  # raises unless all are done
        assert simulated.batches >= 2 and simulated.cpu_seconds > simulated.set_up_seconds > 0
        assert simulated.per_experiment > 0 and simulated.per_batch > 0


def test_a_result_message_feeds_only_its_holder(tmp_path, monkeypatch):
    """Nothing per holder on every message: with 64 holders, the scheduler tries to hand
    out work about once per message, not once per holder per message."""
    fed = []
    feed = Sweep._feed
    monkeypatch.setattr(Sweep, "_feed", lambda sweep, rank: (fed.append(rank),
                                                             feed(sweep, rank))[1])
    holders = 64
    simulated = simulate(holders, 5000, folder=tmp_path)
    assert len(fed) <= holders + 2 * simulated.batches


class _CountedHolders(tuple):
    """Holder ranks that count how often the scheduler visits one of them in a loop."""

    visits = 0

    def __iter__(self):
        for rank in super().__iter__():
            _CountedHolders.visits += 1
            yield rank


def test_the_scheduler_visits_each_holder_a_few_times_per_sweep(tmp_path, monkeypatch):
    """Nothing loops over the holders on every message: waiting for 64 holders to load the
    kernel once checked all of them on each answer (64 x 64 visits; 4,096 holders took
    seconds)."""
    start = Sweep.__init__

    def counted(sweep, *args):
        start(sweep, *args)
        sweep.holders = _CountedHolders(sweep.holders)
    monkeypatch.setattr(Sweep, "__init__", counted)
    monkeypatch.setattr(_CountedHolders, "visits", 0)
    holders = 64
    simulate(holders, 5000, folder=tmp_path)
    assert _CountedHolders.visits <= 4 * holders


def test_libensemble_runs_the_sweep_experiments_as_a_peer(tmp_path):
    """The libEnsemble side of `--peers` (the bench extra; libEnsemble is in the test
    extra too): every experiment's result recorded in the manager's history."""
    result = subprocess.run([*mpiexec(), "-n", "3", sys.executable, "-m", "distx.bench.peers",
                             "libensemble", "40"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["count"] == 40 and figures["seconds"] > 0


def test_a_failing_peer_is_noted_and_the_bench_goes_on(tmp_path):
    """PyExperimenter's jobs can die on SQLite's lock; that once ended a full bench run
    after all its cases, with no table."""
    bench = Bench(8, True, tmp_path)
    bench.peer(1000.0, "a peer", [sys.executable, "-c", "raise SystemExit('database is locked')"],
               10)
    assert bench.rows == []
    assert bench.notes == ["a peer: failed: database is locked"]


def test_the_bench_writes_distx_bytecode_even_under_pythondontwritebytecode(tmp_path):
    """Else every rank of the start-up and end-to-end cases compiled distx from source."""
    check = ("import importlib.util, pathlib, distx.bench.harness as harness\n"
             "harness._compile_distx()\n"
             "package = pathlib.Path(harness.__file__).resolve().parents[1]\n"
             "print(sorted(str(path) for path in package.rglob('*.py')"
             " if not pathlib.Path(importlib.util.cache_from_source(path)).is_file()))")
    environment = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPYCACHEPREFIX": str(tmp_path)}  # no bytecode at all until then
    uncompiled = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                check=True, env=environment).stdout.strip()
    assert uncompiled == "[]"
    assert any(tmp_path.rglob("launch*.pyc"))
