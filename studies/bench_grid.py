"""Benchmark: a 10,000-point optimiser grid (the policy map at a finer grid) and its wall time.

    python -m studies.bench_grid [--workers N] [--executor local|dask --scheduler ADDRESS] [--out FILE.csv]

4 systems x 50 batches (1..4096, log-spaced) x 50 prompt lengths (16..4096, log-spaced), Llama-3.1-70B,
L_out = 32: one exact optimisation (solver "enumerate") per point, run with the same executors as
``lia study``. The goal is under a minute on a 2-core machine. This is a benchmark that prints a figure, not
a test: speed goals are never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from studies import policy_map
from studies.executors import default_workers, run_points


def distinct_log_ints(lo: int, hi: int, n: int) -> tuple[int, ...]:
    """n distinct integers from lo to hi (both included), as evenly spaced in log as integers allow."""
    if hi - lo + 1 < n:
        raise ValueError(f"only {hi - lo + 1} integers in [{lo}, {hi}], cannot pick {n}")
    count = n
    while True:
        values = np.unique(np.rint(np.geomspace(lo, hi, count)).astype(int))
        if len(values) >= n:
            # drop the surplus from the dense low end, keeping both ends
            while len(values) > n:
                gaps = np.diff(np.log(values))
                values = np.delete(values, int(np.argmin(gaps[:-1])) + 1)
            return tuple(int(v) for v in values)
        count += 1


GRID = policy_map.Grid(
    systems=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100"),
    model="llama-3.1-70b",
    batches=distinct_log_ints(1, 4096, 50),
    input_lens=distinct_log_ints(16, 4096, 50),
    output_len=32,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--executor", default="local")
    parser.add_argument("--scheduler", default=None)
    parser.add_argument("--out", type=Path, default=None, help="Also write the rows as a CSV.")
    args = parser.parse_args()
    points = policy_map.points(GRID)
    workers = args.workers or default_workers()
    start = time.perf_counter()
    rows = run_points(policy_map.run, points, executor=args.executor, scheduler=args.scheduler, workers=workers)
    wall = time.perf_counter() - start
    feasible = sum(bool(r["feasible"]) for r in rows)
    print(
        f"{len(points)} points ({feasible} feasible) on {workers} worker(s), executor {args.executor}: "
        f"{wall:.1f} s wall, {len(points) / wall:.0f} points/s, {wall / len(points) * 1e3 * workers:.2f} ms "
        f"per point per worker"
    )
    if args.out is not None:
        from studies.framework import rows_to_frame
        from studies.output import write_csv

        write_csv(rows_to_frame(policy_map.STUDY, rows), args.out)


if __name__ == "__main__":
    main()
