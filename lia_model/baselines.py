"""Baseline plans, built from the same Plan type the optimiser returns (docs/design.md section 4): each is the peer
at its best, not a strawman.

- flexgen:        FlexGen's own policy, chosen by FlexGen's own LP search (lia_model.flexgen) for this
                  system and workload: the weights it keeps on the GPU as whole resident layers of the same
                  bytes, prefill on the GPU in its num_gpu_batches chunks, decode attention on the CPU with
                  AVX-512 in fp32 where it keeps the KV cache there; its batch (gbs x num_gpu_batches) under
                  the throughput objective. Predicted as FlexGen runs it: its CPU attention makes
                  FLEXGEN_CPU_KV_PASSES passes over the cache (``Baseline.cpu_kv_passes``).
- ipex:           everything on the CPU with its best ISA (AMX where present), the embeddings and LM head
                  included: no GPU work and no GPU memory.
- gpu_only:       every layer resident on the GPU (only feasible when the model fits).
- lia_(000000), lia_(111111), lia_(011000): LIA's fixed policies in both stages, with spare GPU
                  memory filled by whole resident layers, as the LIA runtime does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from lia_model.costmodel import Prediction, predict
from lia_model.costterms import CostMode
from lia_model.flexgen import FLEXGEN_CPU_KV_PASSES, FlexGenChoice, FlexGenPolicy, flexgen_choice, flexgen_plan
from lia_model.hardware import SystemSpec
from lia_model.memory import plan_fits
from lia_model.models import ModelSpec
from lia_model.plan import ALL_CPU, ALL_GPU, ATTENTION_ON_CPU, CpuIsa, Device, Plan, policy_notation
from lia_model.workload import Workload


def max_resident_layers(system: SystemSpec, model: ModelSpec, workload: Workload, plan: Plan) -> int:
    """Most whole layers that can be GPU-resident with every tier still fitting (0 if none fits)."""
    for resident in range(model.num_layers, -1, -1):
        candidate = plan.model_copy(update={"gpu_resident_layers": resident})
        if plan_fits(system, model, workload, candidate):
            return resident
    return 0


def _isa(system: SystemSpec, preferred: CpuIsa | None = None) -> CpuIsa:
    if preferred is not None and preferred in system.cpu.isa and system.cpu.isa[preferred].present:
        return preferred
    return system.cpu.best_isa()


@dataclass(frozen=True)
class Baseline:
    """A baseline as its peer runs it: the plan, the batch it runs at, and what executes differently from
    this project's runtime."""

    label: str
    plan: Plan
    workload: Workload
    cpu_kv_passes: float = 1.0  # passes the peer's CPU attention makes over the KV cache
    flexgen: Optional[FlexGenChoice] = None
    runs: bool = True  # False: the peer's own search finds no policy that fits
    why_not: str = ""

    def predict(self, system: SystemSpec, model: ModelSpec, mode: CostMode | str = CostMode.OVERLAP) -> Prediction:
        """The cost model's prediction of the peer running this plan (not fitting when the peer cannot run it)."""
        pred = predict(system, model, self.workload, self.plan, mode, cpu_kv_passes=self.cpu_kv_passes)
        return pred if self.runs else dataclasses.replace(pred, feasible=False)


def flexgen_baseline(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    choose_batch: bool = False,
    max_batch: Optional[int] = None,
) -> Baseline:
    """FlexGen's own policy for the query (its batch too with ``choose_batch``, at most ``max_batch`` when
    given). When FlexGen's LP finds no placement within its 80 % of memory, the baseline does not run: its
    plan is then the placement of everything FlexGen can move to the CPU, at the query's batch."""
    choice = flexgen_choice(system, model, workload, choose_batch=choose_batch, max_batch=max_batch)
    if choice is not None:
        # FlexGen's search sizes a bf16 model (its own compression is 4-bit group-wise only); its policy then
        # runs at the query's precision
        return Baseline(
            "flexgen",
            choice.plan,
            choice.workload.model_copy(update={"precision": workload.precision}),
            FLEXGEN_CPU_KV_PASSES,
            choice,
        )
    nominal = FlexGenPolicy(workload.batch, 1, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    return Baseline(
        "flexgen",
        flexgen_plan(system, model, workload, nominal),
        workload,
        FLEXGEN_CPU_KV_PASSES,
        None,
        runs=False,
        why_not="FlexGen's LP finds no placement within 80 % of GPU and CPU memory",
    )


def ipex_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    return Plan(
        prefill_policy=ALL_CPU,
        decode_policy=ALL_CPU,
        gpu_resident_layers=0,
        cpu_isa=_isa(system),
        head_device=Device.CPU,
        label="ipex",
    )


def gpu_only_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    return Plan(
        prefill_policy=ALL_GPU,
        decode_policy=ALL_GPU,
        gpu_resident_layers=model.num_layers,
        cpu_isa=_isa(system),
        label="gpu_only",
    )


def lia_fixed_plan(system: SystemSpec, model: ModelSpec, workload: Workload, policy: tuple[Device, ...]) -> Plan:
    base = Plan(
        prefill_policy=policy, decode_policy=policy, cpu_isa=_isa(system), label=f"lia_{policy_notation(policy)}"
    )
    return base.model_copy(update={"gpu_resident_layers": max_resident_layers(system, model, workload, base)})


_LIA_FIXED = {f"lia_{policy_notation(p)}": p for p in (ALL_GPU, ALL_CPU, ATTENTION_ON_CPU)}
BASELINE_LABELS: tuple[str, ...] = ("flexgen", "ipex", "gpu_only", *_LIA_FIXED)


def baseline(
    label: str, system: SystemSpec, model: ModelSpec, workload: Workload, choose_batch: bool = False
) -> Baseline:
    """One baseline by label (see BASELINE_LABELS); ``choose_batch``: FlexGen picks its own batch."""
    if label == "flexgen":
        return flexgen_baseline(system, model, workload, choose_batch)
    if label == "ipex":
        plan = ipex_plan(system, model, workload)
    elif label == "gpu_only":
        plan = gpu_only_plan(system, model, workload)
    elif label in _LIA_FIXED:
        plan = lia_fixed_plan(system, model, workload, _LIA_FIXED[label])
    else:
        raise KeyError(f"unknown baseline '{label}': use one of {', '.join(BASELINE_LABELS)}")
    return Baseline(plan.label, plan, workload)


def baselines(
    system: SystemSpec, model: ModelSpec, workload: Workload, choose_batch: bool = False
) -> dict[str, Baseline]:
    """Every baseline by label, at the workload's batch; with ``choose_batch`` (the throughput objective)
    FlexGen runs at the batch its own search picks."""
    return {label: baseline(label, system, model, workload, choose_batch) for label in BASELINE_LABELS}


def baseline_plans(system: SystemSpec, model: ModelSpec, workload: Workload) -> dict[str, Plan]:
    """All baseline plans by label at the workload's batch (what this project's runtime executes)."""
    return {label: b.plan for label, b in baselines(system, model, workload).items()}
