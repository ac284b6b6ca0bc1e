"""`distx bench --quick` as a smoke test: every case runs and reports figures.

The figures themselves are never asserted (they depend on the machine and its load);
README.md has the table from a full run and how to reproduce it.
"""

from __future__ import annotations

import json

from conftest import distx

CASES = ["milestone latency", "GetValue scalar", "GetValue 8 MiB", "Partition rows",
         "kernel: sum of squares", "kernel: Monte Carlo pi", "end-to-end pi sweep",
         "CPU-bound sweep on 8 ranks", "start-up", "sweep 20000 recorded experiments",
         "sweep 20000 experiments of 50-element arrays"]


def test_quick_bench_reports_every_case(tmp_path):
    report = tmp_path / "bench.json"
    result = distx("bench", "--quick", "--json", report, timeout=900)
    assert result.returncode == 0, result.stderr
    figures = json.loads(report.read_text())
    names = [row["case"] for row in figures["rows"]]
    for case in CASES:
        assert any(name.startswith(case) for name in names), case
    for row in figures["rows"]:
        assert row["distx"] > 0 and row["reference"] > 0 and row["ratio"] > 0, row
    assert any("coordinator cost per recorded experiment" in note for note in figures["notes"])
    assert any("array sweep file" in note for note in figures["notes"])
    assert "ratio" in result.stdout and "target" in result.stdout
