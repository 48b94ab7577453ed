"""Solve-time benchmark (a script, not a test): python -m lia_model.optimizer.benchmark [--solvers cbc,highs]
[--queries N] [--objectives latency,throughput,tpot]

Draws 50 varied queries (seeded: systems, models, batch, input and output lengths) and times optimize()
for the latency objective, the throughput objective and the TPOT-bounded throughput objective; for the
throughput objectives it also says in how many queries the batch search proved the best batch (gap 0) and
the largest gap bound left where its budget ran out.
Goals on the 2-core dev machine: latency median < 100 ms; throughput medians < 1 s.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

from lia_model.models import get_model
from lia_model.optimizer import InfeasibleError, optimize
from lia_model.profiles import load_system
from lia_model.workload import make_workload

SYSTEMS = ["spr-a100", "spr-h100", "gnr-a100", "gnr-h100", "spr-a100-cxl", "spr-h100-cxl", "gnr-h100-cxl", "gh200"]
MODELS = ["opt-30b", "opt-66b", "opt-175b", "llama-2-70b", "llama-3.1-70b", "bloom-176b", "mixtral-8x7b"]


def queries(n: int, seed: int = 7):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        model = get_model(rng.choice(MODELS))
        batch = rng.choice([1, 1, 4, 8, 16, 64, 256])
        input_len = rng.choice([32, 128, 256, 512, 1024])
        output_len = rng.choice([8, 32, 64, 128])
        if input_len + output_len > model.max_context:
            continue
        out.append((rng.choice(SYSTEMS), model, make_workload(batch, input_len, output_len, model)))
    return out


def time_objective(qs, objective: str, solver: str, tpot_max_s=None) -> tuple[list[float], list[float]]:
    """Solve times, and for the throughput objective the batch search's gap bounds (0.0 = proven best)."""
    times, gaps = [], []
    for system_name, model, workload in qs:
        system = load_system(system_name)
        t0 = time.perf_counter()
        try:
            result = optimize(system, model, workload, objective, tpot_max_s=tpot_max_s, solver=solver)
            if objective == "throughput":
                gaps.append(result.batch_gap_bound)
        except InfeasibleError:
            pass  # proving infeasibility is part of the work
        times.append(time.perf_counter() - t0)
    return times, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solvers", default="cbc", help="comma-separated: cbc, highs, enumerate")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument(
        "--objectives",
        default="latency,throughput,tpot",
        help="comma-separated: latency, throughput, tpot (throughput under mean TPOT <= 500 ms)",
    )
    args = parser.parse_args()
    wanted = [o.strip() for o in args.objectives.split(",") if o.strip()]
    unknown = [o for o in wanted if o not in ("latency", "throughput", "tpot")]
    if unknown or not wanted:
        parser.error(f"--objectives: unknown '{(unknown or [''])[0]}'; use latency, throughput and/or tpot")
    qs = queries(args.queries)
    print(f"host: {platform.node()} ({platform.processor() or platform.machine()}), {args.queries} queries each")
    print(f"{'solver':<10} {'objective':<28} {'median ms':>10} {'p95 ms':>10}  batch search")
    for solver in args.solvers.split(","):
        for key, label, objective, tpot in (
            ("latency", "latency", "latency", None),
            ("throughput", "throughput", "throughput", None),
            ("tpot", "throughput, TPOT <= 500 ms", "throughput", 0.5),
        ):
            if key not in wanted:
                continue
            times, gaps = time_objective(qs, objective, solver, tpot)
            times = sorted(times)
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            search = ""
            if gaps:
                proven = sum(1 for g in gaps if g == 0.0)
                worst = max((g for g in gaps if g is not None), default=0.0)
                search = f"  best batch proven {proven}/{len(gaps)}, largest gap bound {worst * 100:.2f}%"
            print(
                f"{solver:<10} {label:<28} {statistics.median(times) * 1e3:>10.1f} {p95 * 1e3:>10.1f}{search}",
                flush=True,
            )


if __name__ == "__main__":
    main()
