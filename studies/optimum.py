"""The studies' one door to the optimiser (lia_model.optimizer), plus the row fields of plans.

Sweeps use ``solver="enumerate"``: exact with respect to the cost model and a few milliseconds per query.
Nothing here searches plans itself: the optimiser owns that. ``in_optimizer_space`` states which plans
the optimiser searches, so the tests can check "the optimum is never worse than a baseline in its space".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lia_model.costmodel import Prediction
from lia_model.hardware import SystemSpec
from lia_model.models import ModelSpec
from lia_model.optimizer import InfeasibleError, batch_candidates, optimize
from lia_model.optimizer.space import contains
from lia_model.plan import Plan, policy_notation
from lia_model.workload import Workload

SOLVER = "enumerate"


@dataclass(frozen=True)
class Optimum:
    plan: Plan
    workload: Workload  # the batch the optimiser chose (throughput objective) or the one given
    prediction: Prediction
    solve_time_s: float
    batch_gap_bound: Optional[float] = None  # throughput objective: 0.0 = the best batch is proven; None = not proven


def optimum(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    objective: str = "latency",
    tpot_max_s: Optional[float] = None,
    mode: str = "overlap",
) -> Optional[Optimum]:
    """The optimal plan under the cost mode, or None when no plan fits (the optimiser's InfeasibleError)."""
    try:
        result = optimize(system, model, workload, objective, tpot_max_s=tpot_max_s, solver=SOLVER, mode=mode)
    except InfeasibleError:
        return None
    return Optimum(result.plan, result.workload, result.prediction, float(result.solve_time_s), result.batch_gap_bound)


def throughput_batch_choices(system: SystemSpec, model: ModelSpec, workload: Workload) -> tuple[int, ...]:
    """The batches the optimiser's throughput objective tries for this (L_in, L_out)."""
    return tuple(batch_candidates(system, model, workload))


def in_optimizer_space(
    system: SystemSpec, plan: Plan, batch: int, batch_choices: Optional[tuple[int, ...]] = None
) -> bool:
    """Whether the optimiser's search space holds this plan (at this batch): ``lia_model.optimizer.space.contains``,
    the one definition of that space. With the throughput objective the batch is a knob too, and
    ``batch_choices`` (the optimiser's ``batch_candidates``) are the batches it may choose."""
    return contains(system, plan, batch, batch_choices=batch_choices)


PLAN_COLUMNS = (
    "prefill_policy",
    "decode_policy",
    "gpu_resident_layers",
    "prefill_minibatches",
    "weight_tier",
    "kv_tier",
    "cpu_isa",
)
PREDICTION_COLUMNS = ("feasible", "ttft_s", "tpot_mean_s", "latency_s", "throughput_tokens_per_s")
# which workload, scenario and headline metric a study row reports (the e2e and precision studies' rows start so)
SCENARIO_COLUMNS = ("system", "model", "input_len", "output_len", "scenario", "metric")


def plan_fields(plan: Optional[Plan]) -> dict[str, Any]:
    if plan is None:
        return {c: None for c in PLAN_COLUMNS}
    return {
        "prefill_policy": policy_notation(plan.prefill_policy),
        "decode_policy": policy_notation(plan.decode_policy),
        "gpu_resident_layers": plan.gpu_resident_layers,
        "prefill_minibatches": plan.prefill_minibatches,
        "weight_tier": plan.weight_tier.value,
        "kv_tier": plan.kv_home,
        "cpu_isa": plan.isa_label,
    }


def times_better(candidate: Optional[float], reference: Optional[float], metric: str) -> Optional[float]:
    """How many times better ``candidate`` is than ``reference`` on ``metric``: reference / candidate for latency_s
    (lower is better), candidate / reference for a throughput; None when either is missing."""
    if candidate is None or reference is None:
        return None
    return reference / candidate if metric == "latency_s" else candidate / reference


def prediction_fields(prediction: Optional[Prediction]) -> dict[str, Any]:
    """Headline numbers; an infeasible prediction gives feasible=False and no numbers (never fake ones)."""
    if prediction is None or not prediction.feasible:
        return {
            "feasible": False,
            "ttft_s": None,
            "tpot_mean_s": None,
            "latency_s": None,
            "throughput_tokens_per_s": None,
        }
    return {
        "feasible": True,
        "ttft_s": prediction.ttft_s,
        "tpot_mean_s": prediction.tpot_mean_s,
        "latency_s": prediction.latency_s,
        "throughput_tokens_per_s": prediction.throughput_tokens_per_s,
    }
