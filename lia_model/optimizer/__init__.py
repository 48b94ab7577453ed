"""The exact optimiser: optimize() over the plan space of lia_model.optimizer.space.

Solvers: "cbc" (default, PuLP's bundled CBC), "highs" (PuLP's HiGHS through highspy) and "enumerate"
(exact vectorised enumeration, the oracle the ILP is tested against; the fast choice for large sweeps).
Objectives: "latency" (one query of batch B), "throughput" (B chosen too, up to what memory allows), each
optionally under a bound on the mean time per output token (tpot_max_s).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from lia_model.costmodel import Prediction, predict
from lia_model.costterms import CostMode
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.optimizer.enumerate import any_plan_fits_memory, enumerate_optimum
from lia_model.optimizer.infeasible import explain_memory_infeasibility, largest_feasible
from lia_model.optimizer.space import build_tables
from lia_model.plan import Plan
from lia_model.workload import Workload

BATCH_SEARCH_CAP = 1 << 16


class Objective(str, Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


SOLVERS = ("cbc", "highs", "enumerate")


class InfeasibleError(LiaInputError):
    """No plan of the space fits (memory, or the TPOT bound)."""


@dataclass(frozen=True)
class OptimizeResult:
    plan: Plan
    workload: Workload               # the batch chosen, for the throughput objective
    prediction: Prediction
    objective: Objective
    objective_value: float           # latency_s, or throughput_tokens_per_s
    solver: str
    solve_time_s: float
    solver_objective_s: Optional[float] = None   # the ILP's own objective (latency at the chosen batch)
    batches_tried: tuple[int, ...] = field(default_factory=tuple)


def parse_objective(value: str | Objective) -> Objective:
    try:
        return Objective(value)
    except ValueError:
        raise LiaInputError("--objective", f"unknown objective '{value}'",
                            "use latency or throughput (add --tpot-max-ms for a bounded throughput)") from None


def _check_solver(solver: str) -> str:
    if solver.lower() not in SOLVERS:
        raise LiaInputError("--solver", f"unknown solver '{solver}'", f"use one of {', '.join(SOLVERS)}")
    return solver.lower()


def largest_feasible_batch(system: SystemSpec, model: ModelSpec, input_len: int, output_len: int,
                           cap: int = BATCH_SEARCH_CAP, all_resident: bool = False) -> Optional[int]:
    """Largest batch for which some plan fits memory (None when even B=1 does not); with ``all_resident``
    the largest for which the whole model stays on the GPU."""
    def fits(b: int) -> bool:
        return any_plan_fits_memory(system, model, Workload(batch=b, input_len=input_len, output_len=output_len),
                                    all_resident=all_resident)

    if not fits(1):
        return None
    hi = 1
    while hi < cap and fits(min(hi * 2, cap)):
        hi = min(hi * 2, cap)
    return largest_feasible(hi, min(hi * 2, cap), fits)


def batch_candidates(system: SystemSpec, model: ModelSpec, workload: Workload,
                     max_batch: Optional[int] = None) -> tuple[int, ...]:
    """Powers of two up to the largest batch that fits (capped by max_batch), plus that batch, plus the
    largest batch at which every layer can stay GPU-resident (where the all-GPU regime peaks)."""
    cap = max_batch or BATCH_SEARCH_CAP
    top = largest_feasible_batch(system, model, workload.input_len, workload.output_len, cap=cap)
    if top is None:
        return ()
    out = {top}
    b = 1
    while b <= top:
        out.add(b)
        b *= 2
    resident_top = largest_feasible_batch(system, model, workload.input_len, workload.output_len, cap=cap,
                                          all_resident=True)
    if resident_top is not None:
        out.add(resident_top)
    return tuple(sorted(out))


def solve_latency(system: SystemSpec, model: ModelSpec, workload: Workload, *, tpot_max_s: Optional[float],
                  solver: str, mode: CostMode) -> Optional[tuple[Plan, Optional[float]]]:
    tables = build_tables(system, model, workload, mode)
    if solver == "enumerate":
        found = enumerate_optimum(tables, tpot_max_s=tpot_max_s)
        return (found.plan, found.latency_s) if found else None
    from lia_model.optimizer.ilp import solve_ilp  # PuLP is imported only when an ILP is solved

    sol = solve_ilp(tables, tpot_max_s=tpot_max_s, solver=solver)
    return (sol.plan, sol.objective_s) if sol else None


def _no_plan(system: SystemSpec, model: ModelSpec, workload: Workload, tpot_max_s: Optional[float]) -> InfeasibleError:
    if not any_plan_fits_memory(system, model, workload):
        return InfeasibleError("memory", explain_memory_infeasibility(system, model, workload))
    return InfeasibleError(
        "--tpot-max-ms", f"no plan that fits memory reaches a mean TPOT of {tpot_max_s * 1e3:.3g} ms "
        f"for {model.name} at B={workload.batch} on {system.name}",
        "raise the bound (lia plan without --tpot-max-ms shows the fastest TPOT), or lower the batch")


def optimize(system: SystemSpec, model: ModelSpec, workload: Workload, objective: str | Objective = Objective.LATENCY,
             *, tpot_max_s: Optional[float] = None, solver: str = "cbc", mode: str | CostMode = CostMode.OVERLAP,
             max_batch: Optional[int] = None) -> OptimizeResult:
    """The optimal plan (exact with respect to the cost model over the plan space)."""
    objective = parse_objective(objective)
    solver = _check_solver(solver)
    mode = CostMode(mode)
    if tpot_max_s is not None and tpot_max_s <= 0:
        raise LiaInputError("--tpot-max-ms", f"must be positive, got {tpot_max_s * 1e3:g}", "e.g. --tpot-max-ms 500")
    t0 = time.perf_counter()
    if objective == Objective.LATENCY:
        found = solve_latency(system, model, workload, tpot_max_s=tpot_max_s, solver=solver, mode=mode)
        if found is None:
            raise _no_plan(system, model, workload, tpot_max_s)
        plan, raw = found
        pred = predict(system, model, workload, plan, mode)
        return OptimizeResult(plan, workload, pred, objective, pred.latency_s, solver, time.perf_counter() - t0,
                              raw, (workload.batch,))

    batches = batch_candidates(system, model, workload, max_batch)
    if not batches:
        raise _no_plan(system, model, workload.model_copy(update={"batch": 1}), None)
    best: Optional[tuple[float, Plan, Workload, Optional[float]]] = None
    workloads = [workload.model_copy(update={"batch": b}) for b in batches]

    def solve(wl: Workload):
        return solve_latency(system, model, wl, tpot_max_s=tpot_max_s, solver=solver, mode=mode)

    if solver == "enumerate":
        results = [solve(wl) for wl in workloads]
    else:
        # Each batch is its own ILP; CBC runs as a subprocess, so threads solve them side by side.
        with ThreadPoolExecutor(max_workers=min(len(workloads), os.cpu_count() or 1)) as pool:
            results = list(pool.map(solve, workloads))
    for wl, found in zip(workloads, results):
        if found is None:
            continue
        b = wl.batch
        plan, raw = found
        throughput = b * wl.output_len / raw if raw else 0.0
        if best is None or throughput > best[0]:
            best = (throughput, plan, wl, raw)
    if best is None:
        raise _no_plan(system, model, workload.model_copy(update={"batch": batches[0]}), tpot_max_s)
    _, plan, wl, raw = best
    pred = predict(system, model, wl, plan, mode)
    return OptimizeResult(plan, wl, pred, objective, pred.throughput_tokens_per_s, solver,
                          time.perf_counter() - t0, raw, batches)


__all__ = ["InfeasibleError", "Objective", "OptimizeResult", "SOLVERS", "batch_candidates", "largest_feasible_batch",
           "optimize", "parse_objective"]
