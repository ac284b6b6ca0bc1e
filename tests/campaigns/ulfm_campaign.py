"""ULFM campaign: SIGKILL a worker at random moments of sweeps under Open MPI ULFM.

    .venv-openmpi/bin/python tests/campaigns/ulfm_campaign.py [--kills 20] [--seed 1]

Each kill is one run of tests/scripts/ulfm_sweep.yml (80 experiments, any holder runs
any) or ulfm_rows.yml (40 experiments x 3 row partitions), 4 ranks started with
`mpirun --with-ft ulfm` (tests/test_ulfm.py's ULFM options), a random worker SIGKILLed a
random 0-1.6 s after rank 0 made the results file: during data distribution, mid-sweep or
during the last batches. Every run must complete (exit 0) with the table of an
uninterrupted run, no task recorded done twice, the dead rank recorded and reported
(tests/test_ulfm.py: check_survived). Prints per kill the detection time, from the kill to
rank 0 recording the rank's Errored milestone, and the recovery time, from the kill to
the first task put back on the queue starting on a survivor (taken from /attempts: the
start of the `done` attempt of a task that has a `lost` one), and a summary.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from test_ulfm import (  # noqa: E402
    detection_seconds,
    kill_at_random_moment,
    recovery_seconds,
    ulfm_available,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1, help="first seed of the moments")
    options = parser.parse_args()
    if not ulfm_available():
        print("needs Open MPI's launcher (the openmpi extra: .venv-openmpi)", file=sys.stderr)
        return 2
    detections, recoveries, lost_attempts = [], [], 0
    with tempfile.TemporaryDirectory(prefix="distx-ulfm-") as folder:
        for seed in range(options.seed, options.seed + options.kills):
            killed_at, outcome = kill_at_random_moment(Path(folder), seed)
            lost = len(outcome.lost())
            lost_attempts += lost
            died = ", ".join(f"{rank}" for rank in sorted(outcome.died())) or "none (after the end)"
            detection = detection_seconds(outcome, killed_at)
            recovery = recovery_seconds(outcome, killed_at)
            print(f"kill {seed}: rank died {died}; recorded after "
                  + ("-" if detection is None else f"{detection:.3f} s")
                  + f"; {lost} lost attempt(s); running again on the survivors after "
                  + ("-" if recovery is None else f"{recovery:.3f} s"), flush=True)
            if detection is not None:
                detections.append(detection)
            if recovery is not None:
                recoveries.append(recovery)
    print(f"{options.kills} kills, {options.kills} runs completed with the uninterrupted "
          f"table; {lost_attempts} lost attempts put back on the queue")
    if detections:
        print(f"kill -> rank 0 records the dead rank: median "
              f"{statistics.median(detections):.3f} s, max {max(detections):.3f} s "
              f"({len(detections)} kills before the end)")
    if recoveries:
        print(f"kill -> sweep running again on the survivors: median "
              f"{statistics.median(recoveries):.3f} s, max {max(recoveries):.3f} s "
              f"({len(recoveries)} kills with tasks in flight)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
