"""The plan space the optimiser searches, and the cost tables both exact solvers read.

The space (for one batch B):
  prefill policy, decode policy     any of 2^6 x 2^6 vectors
  GPU-resident layers N_res         0 .. num_layers
  prefill minibatches n             every divisor of B (1 .. B: equal chunks)
  prefill CPU ISA, decode CPU ISA   every ISA the CPU has, chosen per stage
  weight tier, KV tier              DDR, or CXL where the system has it
fixed: pinned weights, weight prefetch overlap (never slower in the model), and the embeddings and LM head
on the GPU (so an all-CPU policy with no resident layer still runs its head there).
For the throughput objectives B is chosen too, from 1 to the largest batch that fits (``batch.py``).

``SpaceTables`` holds, per combination of the discrete knobs other than the policies and N_res, the
affine cost forms of a streamed layer (costterms), the resident layer's times and the memory constants.
The ILP turns those forms into constraints; the enumerator evaluates them on all 64 policy vectors.
Both therefore optimise exactly the model that predict() evaluates.

ISA pruning (exact): the ISA enters a stage's cost only through the CPU time of each sublayer and of the
fused CPU attention (``costterms.sublayer_times``), and every term of a layer's time is non-decreasing in
those times (a policy runs attention on the CPU either split or as the fused pair). An ISA
whose CPU time is >= another kept ISA's for every sublayer and step can therefore never give a strictly
faster plan; ``build_tables`` drops it (``prune_isas=False`` keeps every ISA, for the tests' brute force).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import product

import numpy as np

from lia_model.costmodel import stage_context
from lia_model.costterms import (
    CostMode, StageContext, StageTerms, head_time_s, resident_layer_time, streamed_layer_terms, sublayer_times,
)
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, memory_constants
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, CpuIsa, Device, HostTier, Plan
from lia_model.sublayers import Stage
from lia_model.workload import Workload


def minibatch_candidates(batch: int) -> tuple[int, ...]:
    """Every n that splits the batch into equal chunks: the divisors of B."""
    small = [n for n in range(1, int(batch**0.5) + 1) if batch % n == 0]
    return tuple(sorted(set(small) | {batch // n for n in small}))


def tier_candidates(system: SystemSpec) -> tuple[HostTier, ...]:
    return (HostTier.DDR, HostTier.CXL) if system.has_cxl else (HostTier.DDR,)


def isa_candidates(system: SystemSpec) -> tuple[CpuIsa, ...]:
    """The CPU's ISAs, highest per-core peak first (the order ties are broken in)."""
    present = [(isa, spec.per_core_tflops) for isa, spec in system.cpu.isa.items() if spec.present]
    order = list(CpuIsa)
    return tuple(isa for isa, _ in sorted(present, key=lambda t: (-t[1], order.index(t[0]))))


def template_plan(system: SystemSpec) -> Plan:
    """The fixed knobs of every plan in the space."""
    best = isa_candidates(system)[0]
    return Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, pinned_weights=True, overlap=True,
                prefill_cpu_isa=best, decode_cpu_isa=best, head_device=Device.GPU, label="optimum")


@dataclass(frozen=True)
class Combo:
    """The prefill's discrete knobs other than the policy, the ISA and N_res."""

    minibatches: int
    weight_tier: HostTier
    kv_tier: HostTier

    @property
    def tiers(self) -> tuple[HostTier, HostTier]:
        return (self.weight_tier, self.kv_tier)


@dataclass
class SpaceTables:
    system: SystemSpec
    model: ModelSpec
    workload: Workload
    mode: CostMode
    combos: tuple[Combo, ...]
    isas: tuple[CpuIsa, ...]                                          # every ISA of the CPU, best first
    prefill: dict[Combo, dict[CpuIsa, StageTerms]]                    # streamed layer, prefill (one step)
    decode: dict[tuple[HostTier, HostTier], dict[CpuIsa, StageTerms]]  # streamed layer, decode (L_out - 1 steps)
    resident_prefill_s: dict[int, float]                              # per minibatch count
    resident_decode_s: np.ndarray                                     # per step
    head_s: float
    memory: dict[int, MemoryConstants]                                # per minibatch count

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def decode_steps(self) -> int:
        return self.workload.decode_steps

    @property
    def tier_pairs(self) -> tuple[tuple[HostTier, HostTier], ...]:
        return tuple(dict.fromkeys(c.tiers for c in self.combos))

    @property
    def head_total_s(self) -> float:
        """The LM head runs once in prefill and once per decode step."""
        return self.head_s * (1 + self.decode_steps)


def _with_isa(ctx: StageContext, isa: CpuIsa) -> StageContext:
    return dataclasses.replace(ctx, cpu_isa=isa)


def _cpu_profile(times) -> np.ndarray:
    """What an ISA changes in a streamed layer's terms: every sublayer's CPU time, and the time of the two
    attention sublayers together on the CPU (with calibrated kernel tables they run fused, at
    score + context + fused delta)."""
    fused = times.cpu_s[1] + times.cpu_s[2] + times.cpu_fused_delta_s
    return np.vstack([times.cpu_s, fused[None, :]])


def useful_isas(system: SystemSpec, model: ModelSpec, ctx: StageContext, isas: tuple[CpuIsa, ...],
                prune: bool = True) -> tuple[CpuIsa, ...]:
    """The ISAs not dominated in CPU time for this stage context (see the module docstring)."""
    if not prune or len(isas) == 1:
        return isas
    chunk = ctx.batch // ctx.minibatches
    cpu = {isa: _cpu_profile(sublayer_times(system, model, _with_isa(ctx, isa), chunk)) for isa in isas}
    kept: list[CpuIsa] = []
    for isa in isas:  # best peak first: among equal times the first one stays
        if any(np.all(cpu[k] <= cpu[isa]) for k in kept):
            continue
        kept = [k for k in kept if not np.all(cpu[isa] <= cpu[k])] + [isa]
    return tuple(i for i in isas if i in kept)


def stage_terms_by_isa(system: SystemSpec, model: ModelSpec, ctx: StageContext, isas: tuple[CpuIsa, ...],
                       prune: bool = True, useful: "tuple[CpuIsa, ...] | None" = None) -> dict[CpuIsa, StageTerms]:
    if useful is None:
        useful = useful_isas(system, model, ctx, isas, prune)
    return {isa: streamed_layer_terms(system, model, _with_isa(ctx, isa)) for isa in useful}


def cxl_never_faster(system: SystemSpec) -> bool:
    """The CPU reads CXL no faster than DDR: then an ISA's CPU time dominance found with everything in DDR
    holds for every tier choice (a CPU sublayer takes max(FLOP time, memory time) + overhead, and only the
    memory time grows when data moves to the slower tier)."""
    return system.cxl is None or system.cxl.read_gbps <= system.ddr.read_gbps


def build_tables(system: SystemSpec, model: ModelSpec, workload: Workload, mode: CostMode = CostMode.OVERLAP,
                 prune_isas: bool = True) -> SpaceTables:
    base = template_plan(system)
    isas = isa_candidates(system)
    tiers = tier_candidates(system)
    combos = tuple(Combo(n, wt, kv) for n, wt, kv in product(minibatch_candidates(workload.batch), tiers, tiers))
    prefill: dict[Combo, dict[CpuIsa, StageTerms]] = {}
    decode: dict[tuple[HostTier, HostTier], dict[CpuIsa, StageTerms]] = {}
    resident_prefill: dict[int, float] = {}
    resident_decode = np.zeros(workload.decode_steps)
    memory: dict[int, MemoryConstants] = {}
    shared = cxl_never_faster(system)
    useful: dict[tuple[Stage, int], tuple[CpuIsa, ...]] = {}  # from the all-DDR context (the first combo of each n)
    for c in combos:
        plan = base.model_copy(update={"prefill_minibatches": c.minibatches, "weight_tier": c.weight_tier,
                                       "kv_tier": c.kv_tier})
        ctx = stage_context(workload, plan, Stage.PREFILL, mode)
        key = (Stage.PREFILL, c.minibatches)
        if not shared or key not in useful:
            useful[key] = useful_isas(system, model, ctx, isas, prune_isas)
        prefill[c] = stage_terms_by_isa(system, model, ctx, isas, useful=useful[key])
        if c.minibatches not in resident_prefill:
            resident_prefill[c.minibatches] = float(resident_layer_time(system, model, ctx)[0][0])
            memory[c.minibatches] = memory_constants(system, model, workload, c.minibatches)
        if c.tiers not in decode and workload.decode_steps > 0:
            dctx = stage_context(workload, plan, Stage.DECODE, mode)
            key = (Stage.DECODE, 1)
            if not shared or key not in useful:
                useful[key] = useful_isas(system, model, dctx, isas, prune_isas)
            decode[c.tiers] = stage_terms_by_isa(system, model, dctx, isas, useful=useful[key])
            resident_decode = resident_layer_time(system, model, dctx)[0]
    return SpaceTables(system, model, workload, mode, combos, isas, prefill, decode, resident_prefill,
                       resident_decode, head_time_s(system, model, workload.batch), memory)


def tidy_plan(plan: Plan, all_resident: bool, decode_steps: int, best_isa: CpuIsa) -> Plan:
    """Canonical values for knobs the cost does not see: with every layer resident the policies are
    unused (all-GPU is reported); with no decode step the decode policy is unused, and repeating the
    prefill policy needs no more GPU buffers than any other choice (c = p_pre AND p_dec is then p_pre,
    the largest possible), so it is reported; a stage with no CPU sublayer (or unused) reports the best ISA."""
    from lia_model.plan import Device

    prefill, decode = plan.prefill_policy, plan.decode_policy
    if all_resident:
        prefill, decode = ALL_GPU, ALL_GPU
    elif decode_steps == 0:
        decode = prefill
    pre_isa = plan.prefill_cpu_isa if Device.CPU in prefill else best_isa
    dec_isa = plan.decode_cpu_isa if Device.CPU in decode and decode_steps > 0 else best_isa
    if decode_steps == 0:
        dec_isa = pre_isa
    return plan.model_copy(update={"prefill_policy": prefill, "decode_policy": decode,
                                   "prefill_cpu_isa": pre_isa, "decode_cpu_isa": dec_isa})
