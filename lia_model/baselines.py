"""Baseline plans, built from the same Plan type the optimiser returns (DESIGN.md section 4).

- flexgen:        all compute on the GPU in prefill; in decode attention on the CPU with AVX-512 next to
                  the KV cache; weights and KV in host DDR; no resident layers.
- ipex:           everything on the CPU with its best ISA (AMX where present); no GPU work.
- gpu_only:       every layer resident on the GPU (only feasible when the model fits).
- lia_(000000), lia_(111111), lia_(011000): LIA's fixed policies in both stages, with spare GPU
                  memory filled by whole resident layers, as the LIA runtime does.
"""

from __future__ import annotations

from lia_model.hardware import SystemSpec
from lia_model.memory import memory_use
from lia_model.models import ModelSpec
from lia_model.plan import ALL_CPU, ALL_GPU, ATTENTION_ON_CPU, CpuIsa, Device, HostTier, Plan, policy_notation
from lia_model.workload import Workload


def max_resident_layers(system: SystemSpec, model: ModelSpec, workload: Workload, plan: Plan) -> int:
    """Most whole layers that can be GPU-resident with every tier still fitting (0 if none fits)."""
    for resident in range(model.num_layers, -1, -1):
        candidate = plan.model_copy(update={"gpu_resident_layers": resident})
        if all(u.fits for u in memory_use(system, model, workload, candidate).values()):
            return resident
    return 0


def _isa(system: SystemSpec, preferred: CpuIsa | None = None) -> CpuIsa:
    if preferred is not None and preferred in system.cpu.isa and system.cpu.isa[preferred].present:
        return preferred
    return system.cpu.best_isa()


def flexgen_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    return Plan(prefill_policy=ALL_GPU, decode_policy=ATTENTION_ON_CPU, gpu_resident_layers=0,
                weight_tier=HostTier.DDR, kv_tier=HostTier.DDR, cpu_isa=_isa(system, CpuIsa.AVX512_BF16),
                label="flexgen")


def ipex_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    return Plan(prefill_policy=ALL_CPU, decode_policy=ALL_CPU, gpu_resident_layers=0,
                cpu_isa=_isa(system), label="ipex")


def gpu_only_plan(system: SystemSpec, model: ModelSpec, workload: Workload) -> Plan:
    return Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, gpu_resident_layers=model.num_layers,
                cpu_isa=_isa(system), label="gpu_only")


def lia_fixed_plan(system: SystemSpec, model: ModelSpec, workload: Workload, policy: tuple[Device, ...]) -> Plan:
    base = Plan(prefill_policy=policy, decode_policy=policy, cpu_isa=_isa(system),
                label=f"lia_{policy_notation(policy)}")
    return base.model_copy(update={"gpu_resident_layers": max_resident_layers(system, model, workload, base)})


def baseline_plans(system: SystemSpec, model: ModelSpec, workload: Workload) -> dict[str, Plan]:
    """All baselines by label."""
    plans = [
        flexgen_plan(system, model, workload),
        ipex_plan(system, model, workload),
        gpu_only_plan(system, model, workload),
        *(lia_fixed_plan(system, model, workload, p) for p in (ALL_GPU, ALL_CPU, ATTENTION_ON_CPU)),
    ]
    return {p.label: p for p in plans}
