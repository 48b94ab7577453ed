"""What the optimiser's cap on prefill minibatches (space.MAX_PREFILL_MINIBATCHES) gives up, in the model.

For each case, the optimum over every divisor of B against the optimum over divisors up to the cap: the
minibatch count each picks and the latency lost. Prints a table; nothing is written.

    python tools/minibatch_cap.py            # the default grid (about a minute on 2 cores)
"""

from __future__ import annotations

import time
from itertools import product

from lia_model.models import get_model
from lia_model.optimizer import optimize, space
from lia_model.profiles import load_system
from lia_model.workload import Workload

SYSTEMS = ("spr-a100", "gnr-a100", "gnr-h100")
MODELS = ("opt-30b", "opt-175b", "llama-2-70b")
CASES = ((48, 1024, 32), (96, 512, 32), (128, 2016, 32), (240, 256, 32))  # (B, L_in, L_out): many divisors


def best(system, model, workload, cap):
    space.MAX_PREFILL_MINIBATCHES = cap
    start = time.perf_counter()
    result = optimize(system, model, workload, "latency", solver="enumerate")
    return result.plan.prefill_minibatches, result.prediction.latency_s, time.perf_counter() - start


def main() -> None:
    cap = space.MAX_PREFILL_MINIBATCHES
    print(f"cap = {cap}")
    print(
        f"{'system':9} {'model':12} {'B':>4} {'L_in':>5} | {'n all':>5} {'n cap':>5} | {'loss':>7} | "
        f"{'s all':>6} {'s cap':>6}"
    )
    worst = 0.0
    for sys_name, model_name, (b, li, lo) in product(SYSTEMS, MODELS, CASES):
        system, model = load_system(sys_name), get_model(model_name)
        wl = Workload(batch=b, input_len=li, output_len=lo)
        try:
            n_all, lat_all, t_all = best(system, model, wl, 10**9)
            n_cap, lat_cap, t_cap = best(system, model, wl, cap)
        except Exception as err:  # noqa: BLE001 - an infeasible case is reported, not fatal
            print(f"{sys_name:9} {model_name:12} {b:>4} {li:>5} | {type(err).__name__}")
            continue
        loss = lat_cap / lat_all - 1
        worst = max(worst, loss)
        print(
            f"{sys_name:9} {model_name:12} {b:>4} {li:>5} | {n_all:>5} {n_cap:>5} | {loss:>7.3%} | "
            f"{t_all:>6.2f} {t_cap:>6.2f}"
        )
    space.MAX_PREFILL_MINIBATCHES = cap
    print(f"largest latency lost to the cap: {worst:.3%}")


if __name__ == "__main__":
    main()
