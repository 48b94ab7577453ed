"""Probe: one of the runtime's CPU sublayers timed from the launching thread and from worker threads placed in
different ways, under the runtime's CPU setup (issue 10, the worker thread of runtime/cpu_worker.py).

    python tools/probe_cpu_worker.py [--out CSV] [--model opt-30b] [--sublayer fc1] [--tokens 1,256]

OpenMP binds its first master (the launching thread) to the first place at its first parallel region; a thread it
starts inherits that core, and becomes the master of a team of its own at its own first parallel region. Where the
new team's threads go, and whether one shares the master's core, is what this measures: per placement, the median
time of the sublayer (the runtime's own call, calibrate.kernel_tables._sublayer_call, over weight copies larger
than the last-level cache) and every thread's allowed CPUs afterwards. Placements:

- ``main``: the launching thread, as the runtime runs CPU sublayers inline;
- ``worker``: a new thread with the inherited affinity (what runtime/cpu_worker.py did first);
- ``worker+launcher-moved``: the same, the launching thread moved to the feeder's core meanwhile;
- ``worker-free-core``: a new thread moved, after its first parallel region, to the OpenMP place none of its
  team's threads took (the fix, if the team leaves one place free);
- ``main-again``: the launching thread once more (the host's state after the rest).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import threading
import time
from pathlib import Path


def thread_cpus() -> dict[int, tuple[str, str]]:
    """tid -> (name, allowed CPUs) of every thread of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except OSError:
            continue
        allowed = next(
            (ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("Cpus_allowed_list")), "?"
        )
        out[int(tid)] = (name, allowed)
    return out


def expand(cpus: str) -> set[int]:
    out: set[int] = set()
    for part in cpus.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part.strip().isdigit():
            out.add(int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="probe_cpu_worker.csv")
    parser.add_argument("--model", default="opt-30b")
    parser.add_argument("--sublayer", default="fc1")
    parser.add_argument("--tokens", default="1,256")
    parser.add_argument("--calls", type=int, default=24)
    args = parser.parse_args(argv)

    from runtime import cpu_setup

    setup = cpu_setup.apply()
    import torch

    from calibrate.kernel_tables import _params, _sublayer_call
    from lia_model.inputs import resolve_model
    from lia_model.sublayers import Sublayer

    model = resolve_model(args.model)
    sub = Sublayer(args.sublayer)
    cpu = torch.device("cpu")
    params = _params(model, sub, cpu, 4)
    tokens_list = [int(t) for t in args.tokens.split(",")]
    calls = {t: [_sublayer_call(model, sub, p, t, cpu) for p in params] for t in tokens_list}

    def timed(tokens: int) -> float:
        fns = calls[tokens]
        for fn in fns:
            fn()
        times = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            fns[i % len(fns)]()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    omp_places = set().union(*(expand(g) for g in os.environ.get("OMP_PLACES", "").strip("{}").split("},{") if g))
    if not omp_places:  # OMP_PLACES=cores: every allowed CPU but the feeder's
        omp_places = set(cpu_setup.allowed_cpus()) - set(setup.feeder_cpus)
    print(f"setup: {setup.describe()}; OMP_PLACES cores {sorted(omp_places)}; torch threads {torch.get_num_threads()}")
    rows: list[dict] = []

    def record(placement: str, ms: dict[int, float], note: str) -> None:
        for t, v in ms.items():
            rows.append({"placement": placement, "tokens": t, "median_ms": round(v, 4), "note": note})
        print(f"{placement:24s} " + "  ".join(f"{t} tok {v:8.3f} ms" for t, v in ms.items()) + f"  {note}")

    def in_thread(body) -> dict:
        box: dict = {}

        def run() -> None:
            torch.set_num_threads(setup.threads)
            with torch.inference_mode():
                box.update(body())

        th = threading.Thread(target=run, name="probe-worker")
        th.start()
        th.join()
        return box

    with torch.inference_mode():
        record("main", {t: timed(t) for t in tokens_list}, f"main allowed {os.sched_getaffinity(0)}")

    before = set(thread_cpus())

    def worker_body() -> dict:
        ms = {t: timed(t) for t in tokens_list}
        team = {tid: v for tid, v in thread_cpus().items() if tid not in before}
        return {"ms": ms, "team": team, "self": sorted(os.sched_getaffinity(0))}

    box = in_thread(worker_body)
    shared = [v[1] for v in box["team"].values()]
    record("worker", box["ms"], f"worker allowed {box['self']}; new threads' CPUs {sorted(shared)}")

    launcher = set(os.sched_getaffinity(0))
    if setup.feeder_cpus:
        os.sched_setaffinity(0, setup.feeder_cpus)
    box = in_thread(lambda: {"ms": {t: timed(t) for t in tokens_list}})
    os.sched_setaffinity(0, launcher)
    record("worker+launcher-moved", box["ms"], f"launcher on {setup.feeder_cpus}")

    before = set(thread_cpus())

    def free_core_body() -> dict:
        torch.ones(1 << 22).sum()  # the team's first parallel region: its threads bind
        team = {tid: v for tid, v in thread_cpus().items() if tid not in before and tid != threading.get_native_id()}
        taken = set().union(*(expand(v[1]) for v in team.values())) if team else set()
        free = sorted(omp_places - taken)
        if free:
            os.sched_setaffinity(0, free)
        ms = {t: timed(t) for t in tokens_list}
        return {"ms": ms, "free": free, "taken": sorted(taken)}

    box = in_thread(free_core_body)
    record("worker-free-core", box["ms"], f"moved to {box['free']} (team took {box['taken']})")
    with torch.inference_mode():
        record("main-again", {t: timed(t) for t in tokens_list}, "")
    print("threads now:")
    for tid, (name, allowed) in sorted(thread_cpus().items()):
        print(f"  {tid} {name} {allowed}")
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["placement", "tokens", "median_ms", "note"])
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
