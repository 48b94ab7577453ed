"""The exact optimiser: optimize() over the plan space of lia_model.optimizer.space.

Solvers: "cbc" (default, PuLP's bundled CBC), "highs" (PuLP's HiGHS through highspy) and "enumerate"
(exact vectorised enumeration, the oracle the ILP is tested against; the fast choice for large sweeps).
Objectives: "latency" (one query of batch B), "throughput" (B chosen too, up to what memory allows), each
optionally under a bound on the mean time per output token (tpot_max_s) and one on the time to the first token
(ttft_max_s: the prefill pass and its LM head, costmodel.predict's ttft_s).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import numpy as np

from lia_model.costmodel import Prediction, predict
from lia_model.costterms import CostMode, check_precision
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.optimizer.batch import BATCH_SEARCH_CAP, DEFAULT_MAX_SOLVES, largest_feasible_batch, search_batch
from lia_model.optimizer.enumerate import (
    EnumeratedOptimum,
    any_plan_fits_memory,
    best_in_combo,
    combo_arrays,
    enumerate_optimum,
    exact_combo_latencies,
    lazy_optimum,
    stage_constants,
)
from lia_model.optimizer.infeasible import explain_memory_infeasibility
from lia_model.optimizer.space import SpaceTables, build_tables, simulate_every_prefill
from lia_model.plan import Plan
from lia_model.workload import Workload


class Objective(str, Enum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


SOLVERS = ("cbc", "highs", "enumerate")


class InfeasibleError(LiaInputError):
    """No plan of the space fits (memory, or the TPOT or TTFT bound)."""


@dataclass(frozen=True)
class OptimizeResult:
    plan: Plan
    workload: Workload  # the batch chosen, for the throughput objective
    prediction: Prediction
    objective: Objective
    objective_value: float  # latency_s, or throughput_tokens_per_s
    solver: str
    solve_time_s: float
    solver_objective_s: Optional[float] = None  # the ILP's own objective (latency at the chosen batch)
    batches_tried: tuple[int, ...] = field(default_factory=tuple)  # batches solved exactly
    largest_fitting_batch: Optional[int] = None  # throughput: the top of the batch range searched
    batch_gap_bound: Optional[float] = 0.0  # throughput: no batch of the range beats this result by
    # more than this fraction (0.0: proven best batch; None:
    # not proven, on profiles with calibrated kernel tables)


def parse_objective(value: str | Objective) -> Objective:
    try:
        return Objective(value)
    except ValueError:
        raise LiaInputError(
            "--objective",
            f"unknown objective '{value}'",
            "use latency or throughput (add --tpot-max-ms for a bounded throughput)",
        ) from None


def _check_solver(solver: str) -> str:
    if solver.lower() not in SOLVERS:
        raise LiaInputError("--solver", f"unknown solver '{solver}'", f"use one of {', '.join(SOLVERS)}")
    return solver.lower()


def batch_candidates(
    system: SystemSpec, model: ModelSpec, workload: Workload, max_batch: Optional[int] = None
) -> tuple[int, ...]:
    """Every batch the throughput objective may choose: 1 .. the largest that fits memory (capped by
    max_batch)."""
    top = largest_feasible_batch(
        system,
        model,
        workload.input_len,
        workload.output_len,
        cap=max_batch or BATCH_SEARCH_CAP,
        precision=workload.precision,
    )
    return tuple(range(1, top + 1)) if top is not None else ()


def solve_latency(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    *,
    tpot_max_s: Optional[float],
    solver: str,
    mode: CostMode,
    ttft_max_s: Optional[float] = None,
    tables: Optional[SpaceTables] = None,
    found: Optional[EnumeratedOptimum] = None,
) -> Optional[tuple[Plan, Optional[float]]]:
    """The minimum-latency plan at this batch and the solver's own objective. The ILP leaves out the combos
    with which no plan reaches the enumerator's optimum (its optimum per combo); tests/test_optimizer.py also
    solves the full ILP. Under a TTFT bound the plan returned meets it in predict()'s own numbers. ``tables``:
    this batch's tables where the caller already has them. Without a TTFT bound they are built with bounded
    prefill schedules (``prefill_bound``): the enumerator simulates what can win (``lazy_optimum``; ``found``: its
    result on these tables, where the caller has it), then the combos that can reach the optimum are made exact
    (``exact_combo_latencies``) and the ILP simulates what its model reads: the same model as on fully simulated
    tables. Under a TTFT bound every prefill term is simulated."""
    if tables is None:
        tables = build_tables(system, model, workload, mode, prefill_bound=ttft_max_s is None)
    if ttft_max_s is None and tables.prefill_bound:
        bound = None
        if found is None:
            found = lazy_optimum(tables, tpot_max_s=tpot_max_s)
        if solver != "enumerate" and found is not None:
            combo_bounds = exact_combo_latencies(tables, found, tpot_max_s)
        else:
            combo_bounds = None
    else:
        tables = simulate_every_prefill(tables)
        found, bound = _enumerate_within_ttft(tables, tpot_max_s, ttft_max_s)
        combo_bounds = found.combo_latency_s if found else None
    if solver == "enumerate":
        return (found.plan, found.latency_s) if found else None
    from lia_model.optimizer.ilp import solve_ilp  # PuLP is imported only when an ILP is solved

    sol = solve_ilp(tables, tpot_max_s=tpot_max_s, solver=solver, combo_bounds=combo_bounds, ttft_max_s=bound)
    if sol is not None and found is not None and _ttft_over(tables, sol.plan, ttft_max_s) > 0:
        # The ILP meets its rows to the solver's tolerance (about 1e-9 s here); a plan over the bound by that
        # much gives way to the enumerator's, which meets it.
        return found.plan, found.latency_s
    return (sol.plan, sol.objective_s) if sol else None


def _ttft_over(tables, plan: Plan, ttft_max_s: Optional[float]) -> float:
    """How far predict()'s TTFT of the plan is over the bound (<= 0: within it; -inf without a bound)."""
    if ttft_max_s is None:
        return -np.inf
    return predict(tables.system, tables.model, tables.workload, plan, tables.mode).ttft_s - ttft_max_s


def _enumerate_within_ttft(tables, tpot_max_s: Optional[float], ttft_max_s: Optional[float], tries: int = 4):
    """The enumerator's optimum and the TTFT bound it was solved under. The enumerator prices the TTFT with
    predict()'s formula, but its tables evaluate 64 policy vectors at once, and in the additive model predict()'s
    one vector can sum the same terms to a last-bit different number; a plan over the bound by such a rounding is
    left out by solving again under a bound lowered by twice the excess."""
    bound = ttft_max_s
    for _ in range(tries):
        found = enumerate_optimum(tables, tpot_max_s=tpot_max_s, ttft_max_s=bound)
        over = -np.inf if found is None else _ttft_over(tables, found.plan, ttft_max_s)
        if over <= 0:
            return found, bound
        bound -= 2 * over + 2 * np.spacing(bound)
    return None, bound


def _ms_at_least(value_s: float) -> str:
    """``value_s`` in ms to 4 significant digits, rounded up (a bound given as printed is met)."""
    ms = value_s * 1e3
    unit = 10.0 ** (math.floor(math.log10(ms)) - 3)
    return f"{math.ceil(ms / unit) * unit:.4g}"


def _no_plan(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    tpot_max_s: Optional[float],
    ttft_max_s: Optional[float] = None,
    mode: CostMode = CostMode.OVERLAP,
) -> InfeasibleError:
    if not any_plan_fits_memory(system, model, workload):
        return InfeasibleError("memory", explain_memory_infeasibility(system, model, workload))
    if tpot_max_s is None and ttft_max_s is None:  # fits memory, yet no plan has a finite time: numbers overflow
        return InfeasibleError(
            "system",
            f"no plan of {model.name} on {system.name} has a finite time",
            "check the profile's bandwidths and throughputs ('lia profiles show')",
        )
    where = f"{model.name} at B={workload.batch} on {system.name}"
    smaller = ", or a smaller batch" if workload.batch > 1 else ""
    fastest_tpot = None if tpot_max_s is None else fastest_tpot_s(system, model, workload, mode)
    if tpot_max_s is not None and (ttft_max_s is None or fastest_tpot > tpot_max_s):
        return InfeasibleError(
            "--tpot-max-ms",
            f"no plan that fits memory reaches a mean TPOT of {tpot_max_s * 1e3:.3g} ms for "
            f"{where}: the fastest is {fastest_tpot * 1e3:.4g} ms",
            f"use --tpot-max-ms {fastest_tpot * 1e3:.4g} or more{smaller}",
        )
    fastest_ttft = fastest_ttft_s(system, model, workload, mode)
    if fastest_tpot is None or fastest_ttft > ttft_max_s:
        return InfeasibleError(
            "--ttft-max-ms",
            f"no plan that fits memory reaches a TTFT of {ttft_max_s * 1e3:g} ms for {where}: the fastest is "
            f"{fastest_ttft * 1e3:.4g} ms",
            f"use --ttft-max-ms {_ms_at_least(fastest_ttft)} or more{smaller}",
        )
    return InfeasibleError(  # each bound alone is met by some plan, both together by none
        "--ttft-max-ms",
        f"no plan that fits memory meets both a TTFT of {ttft_max_s * 1e3:g} ms and a mean TPOT of "
        f"{tpot_max_s * 1e3:g} ms for {where} (each alone: the fastest TTFT is {fastest_ttft * 1e3:.4g} ms, the "
        f"fastest mean TPOT {fastest_tpot * 1e3:.4g} ms)",
        f"raise --ttft-max-ms or --tpot-max-ms{smaller}",
    )


def fastest_tpot_s(
    system: SystemSpec, model: ModelSpec, workload: Workload, mode: CostMode = CostMode.OVERLAP
) -> float:
    """The smallest mean time per output token any plan that fits memory reaches at this batch: the
    enumerator with the decode time as the objective (prefill priced at zero)."""
    import dataclasses

    steps = workload.decode_steps
    if steps == 0:
        return float("inf")
    tables = build_tables(system, model, workload, mode)
    consts = dataclasses.replace(stage_constants(tables), head_total_s=tables.head_s * steps)

    def decode_only(combo):
        for isa_dec in tables.decode_isas(combo):
            arrays = combo_arrays(tables, combo, tables.prefill_isas(combo)[0], isa_dec)
            arrays.pre = {t: np.zeros_like(v) for t, v in arrays.pre.items()}
            arrays.resident_prefill_s = 0.0
            arrays.pre_fill = None  # prefill priced at zero: the steady-state sum of zeros
            yield arrays

    return _best_over_combos(tables, consts, decode_only) / steps


def fastest_ttft_s(
    system: SystemSpec, model: ModelSpec, workload: Workload, mode: CostMode = CostMode.OVERLAP
) -> float:
    """The smallest time to the first token any plan that fits memory reaches at this batch: the enumerator
    with the TTFT as the objective (decode priced at zero, the head once)."""
    import dataclasses

    tables = build_tables(system, model, workload, mode)
    consts = dataclasses.replace(stage_constants(tables), resident_decode_total_s=0.0, head_total_s=tables.head_s)

    def prefill_only(combo):
        for isa_pre in tables.prefill_isas(combo):
            arrays = combo_arrays(tables, combo, isa_pre, tables.decode_isas(combo)[0])
            arrays.dec = {t: np.zeros_like(v) for t, v in arrays.dec.items()}
            yield arrays

    return _best_over_combos(tables, consts, prefill_only)


def _best_over_combos(tables, consts, arrays_of) -> float:
    """The enumerator's smallest objective over every combo, each priced by the arrays ``arrays_of(combo)``
    yields (one per ISA of the stage that counts); inf where nothing fits."""
    best = float("inf")
    for combo in tables.combos:
        for arrays in arrays_of(combo):
            found = best_in_combo(arrays, consts)
            if found is not None:
                best = min(best, found[0])
    return best


def optimize(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    objective: str | Objective = Objective.LATENCY,
    *,
    tpot_max_s: Optional[float] = None,
    solver: str = "cbc",
    mode: str | CostMode = CostMode.OVERLAP,
    max_batch: Optional[int] = None,
    batch_solves: int = DEFAULT_MAX_SOLVES,
    batch_rel_tol: float = 0.0,
    ttft_max_s: Optional[float] = None,
) -> OptimizeResult:
    """The optimal plan (exact with respect to the cost model over the plan space), under the bounds given:
    mean TPOT <= ``tpot_max_s`` and TTFT <= ``ttft_max_s`` (predict()'s numbers of the plan returned).

    Throughput: the batch is searched over 1 .. the largest that fits (``max_batch`` caps it) by branch and
    bound; ``batch_solves`` bounds the batches solved exactly, and the result's ``batch_gap_bound`` says how
    much better any unsolved batch could be (0.0 when the search proved the best batch)."""
    objective = parse_objective(objective)
    solver = _check_solver(solver)
    mode = CostMode(mode)
    check_precision(system, workload.precision, mode)  # one clear error for a precision the system cannot run
    if tpot_max_s is not None and tpot_max_s <= 0:
        raise LiaInputError("--tpot-max-ms", f"must be positive, got {tpot_max_s * 1e3:g}", "e.g. --tpot-max-ms 500")
    if ttft_max_s is not None and not ttft_max_s > 0:
        raise LiaInputError("--ttft-max-ms", f"must be positive, got {ttft_max_s * 1e3:g}", "e.g. --ttft-max-ms 5000")
    bounds = dict(tpot_max_s=tpot_max_s, ttft_max_s=ttft_max_s)
    t0 = time.perf_counter()
    if objective == Objective.LATENCY:
        tables = build_tables(system, model, workload, mode, prefill_bound=ttft_max_s is None)
        found = solve_latency(system, model, workload, solver=solver, mode=mode, tables=tables, **bounds)
        if found is None:
            raise _no_plan(system, model, workload, mode=mode, **bounds)
        plan, raw = found
        pred = predict(system, model, workload, plan, mode, known_terms=tables.exact_streamed_terms())
        return OptimizeResult(
            plan, workload, pred, objective, pred.latency_s, solver, time.perf_counter() - t0, raw, (workload.batch,)
        )

    # Throughput: the batch by branch and bound (batch.py); each batch it needs solved exactly is solved by
    # the vectorised enumerator (exact, milliseconds), the chosen batch again by the requested solver.
    enumerated: dict[int, object] = {}
    # (tokens per second, -batch, tables) of the best batch solved so far, as search_batch ranks them: the requested
    # solver reads those tables again if the search ends there (else it builds its own)
    kept: Optional[tuple[float, int, SpaceTables]] = None
    # streamed layers' terms the search's relaxed bounds and exact solves share (space.shared_layer_terms)
    terms_cache: dict = {}

    def latency_at(wl: Workload) -> Optional[float]:
        nonlocal kept
        if ttft_max_s is None:  # the prefill simulated only where it can win (enumerate.lazy_optimum)
            tables = build_tables(system, model, wl, mode, prefill_bound=True, terms_cache=terms_cache)
            found = lazy_optimum(tables, tpot_max_s=tpot_max_s)
        else:  # a TTFT bound reads every plan's prefill: the fully simulated tables
            tables = build_tables(system, model, wl, mode, terms_cache=terms_cache)
            found, _ = _enumerate_within_ttft(tables, tpot_max_s, ttft_max_s)
        enumerated[wl.batch] = found
        if found is None:
            return None
        rank = (wl.batch * wl.output_len / found.latency_s, -wl.batch)
        if kept is None or rank > kept[:2]:
            kept = (*rank, tables)
        return found.latency_s

    search = search_batch(
        system,
        model,
        workload,
        **bounds,
        mode=mode,
        solve=latency_at,
        cap=max_batch or BATCH_SEARCH_CAP,
        max_solves=batch_solves,
        rel_tol=batch_rel_tol,
        terms_cache=terms_cache,
    )
    if search.largest_fitting_batch is None:
        raise _no_plan(system, model, workload.model_copy(update={"batch": 1}), None, mode=mode)
    if search.batch is None:
        raise _no_plan(system, model, workload.model_copy(update={"batch": 1}), mode=mode, **bounds)
    wl = workload.model_copy(update={"batch": search.batch})
    best = enumerated.get(search.batch)
    kept_tables = kept is not None and -kept[1] == search.batch
    tables = kept[2] if kept_tables else None
    if solver == "enumerate" and best is not None:  # already solved by the search: the same enumeration
        found = (best.plan, best.latency_s)
    else:
        if tables is None:
            tables = build_tables(system, model, wl, mode, prefill_bound=ttft_max_s is None)
        # (the search's enumeration of these tables, where it solved them: ``best``)
        found = solve_latency(
            system, model, wl, solver=solver, mode=mode, tables=tables, found=best if kept_tables else None, **bounds
        )
    if found is None:  # the enumerator found a plan at this batch; an exact solver cannot miss it
        raise RuntimeError(f"{solver} found no plan at B={wl.batch} where the enumerator found one")
    plan, raw = found
    pred = predict(system, model, wl, plan, mode, known_terms=None if tables is None else tables.exact_streamed_terms())
    return OptimizeResult(
        plan,
        wl,
        pred,
        objective,
        pred.throughput_tokens_per_s,
        solver,
        time.perf_counter() - t0,
        raw,
        search.solved,
        search.largest_fitting_batch,
        search.gap_bound,
    )


__all__ = [
    "InfeasibleError",
    "Objective",
    "OptimizeResult",
    "SOLVERS",
    "batch_candidates",
    "largest_feasible_batch",
    "optimize",
    "parse_objective",
]
