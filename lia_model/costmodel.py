"""predict(): the cost of one plan on one system for one model and workload (docs/design.md section 3).

TTFT      = prefill_pass_s(N_res T_res(prefill), K, c, W, X) + T_head      (overlap mode, pinned weights, no CXL:
            the two-buffer weight pipeline from the pass start, costterms.prefill_pass_s)
          = N_res T_res(prefill) + K_ddr T_stream(prefill, DDR) + K_cxl T_stream(prefill, CXL) + T_head   (otherwise)
TPOT(t)   = N_res T_res(decode, s_t) + K_ddr T_stream(decode, s_t, DDR) + K_cxl T_stream(...CXL) + T_head,
            s_t = L_in + t, t = 1 .. L_out-1     (T_head on the plan's head device)
latency   = TTFT + sum_t TPOT(t);  throughput = B L_out / latency
with K = num_layers - N_res streamed layers, K_cxl of them with their weights in CXL (plan.weight_tier cxl:
all; plan.cxl_weight_layers: a split) and K_ddr = K - K_cxl in DDR. The layer times come from costterms (max
over epigraph terms in overlap mode, the serial sum in additive mode, the authors' model in paper mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from lia_model.costterms import (
    CostMode,
    Resource,
    StageContext,
    StageTerms,
    SublayerTimes,
    check_precision,
    head_time_s,
    pass_start_fill,
    policy_features,
    prefill_pass_s,
    resident_layer_time,
    streamed_layer_terms,
)
from lia_model.errors import LiaInputError
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryTier, TierUse, memory_use
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, Device, HostTier, Plan, check_plan_against, head_device, policy_index
from lia_model.sublayers import SUBLAYERS, Stage
from lia_model.workload import Workload, make_workload


@dataclass(frozen=True)
class Shortfall:
    tier: MemoryTier
    required_gb: float
    available_gb: float
    shortfall_gb: float


@dataclass(frozen=True)
class BreakdownRow:
    """One sublayer of one layer kind in one stage (decode: mean over steps)."""

    stage: Stage
    layer_kind: str  # "streamed" or "resident"
    layers: int  # how many layers of this kind
    sublayer: str
    device: Device
    compute_s: float  # roofline time on its device (incl. op overhead)
    memory_s: float  # the memory-bandwidth part of it
    pcie_s: float  # weight prefetch + its outgoing activation copy + its KV copies (cached K/V
    # fetched for GPU attention, new K/V written back by a GPU qkv)
    bound: str  # "compute", "memory" or "pcie"


@dataclass(frozen=True)
class StageReport:
    stage: Stage
    streamed_layer_s: np.ndarray  # per step (mean over the streamed layers when their weights are split)
    resident_layer_s: np.ndarray  # per step
    head_s: float
    bound: tuple[Resource, ...]  # binding term of the streamed layer, per step
    resource_busy_s: dict[Resource, np.ndarray]  # whole-layer busy time of each resource, per step
    cpu_slowdown: float = 1.0  # mean over steps of the streamed layer's CPU work slowdown beside the weight DMA
    # (StageTerms.cpu_scale at the plan's policy; 1 without kernel tables or CPU work): the in-situ CPU sublayer
    # time this model expects over its solo (calibrated) time, for the sublayers it applies to:
    cpu_slowed: tuple[bool, ...] = (True, True, True, True, True, True)  # StageTerms.cpu_slowed


@dataclass(frozen=True)
class Prediction:
    system: str
    model: str
    workload: Workload
    plan: Plan
    mode: CostMode
    feasible: bool
    shortfalls: tuple[Shortfall, ...]
    memory: dict[MemoryTier, TierUse]
    ttft_s: float
    tpot_s: tuple[float, ...]
    latency_s: float
    throughput_tokens_per_s: float
    stages: dict[Stage, StageReport]
    breakdown: tuple[BreakdownRow, ...] = field(default_factory=tuple)

    @property
    def tpot_mean_s(self) -> Optional[float]:
        """Mean time per output token over the decode steps (None when L_out = 1: no decode step)."""
        return float(np.mean(self.tpot_s)) if self.tpot_s else None

    @property
    def bound_resource(self) -> dict[Stage, str]:
        """The most frequent binding term of a streamed layer per stage ("none" without streamed layers)."""
        out = {}
        for stage, rep in self.stages.items():
            if not rep.bound:
                out[stage] = "none"
                continue
            values, counts = np.unique([r.value for r in rep.bound], return_counts=True)
            out[stage] = str(values[int(np.argmax(counts))])
        return out

    def summary(self) -> dict:
        """Plain dict of the headline figures (for JSON and tables)."""
        return {
            "feasible": self.feasible,
            "ttft_s": self.ttft_s,
            "tpot_mean_s": self.tpot_mean_s,
            "latency_s": self.latency_s,
            "throughput_tokens_per_s": self.throughput_tokens_per_s,
            "memory_gb": {t.value: u.required_gb for t, u in self.memory.items()},
            "memory_available_gb": {t.value: u.available_gb for t, u in self.memory.items()},
            "shortfalls": [
                {
                    "tier": s.tier.value,
                    "required_gb": s.required_gb,
                    "available_gb": s.available_gb,
                    "shortfall_gb": s.shortfall_gb,
                }
                for s in self.shortfalls
            ],
            "bound_resource": {s.value: b for s, b in self.bound_resource.items()},
        }


def stage_context(
    workload: Workload,
    plan: Plan,
    stage: Stage,
    mode: CostMode,
    cpu_kv_passes: float = 1.0,
    weight_tier: Optional[HostTier] = None,
) -> StageContext:
    """The stage's fixed knobs; ``weight_tier`` picks the kind of streamed layer when the plan splits its
    weights between DDR and CXL (default: the plan's weight_tier)."""
    if stage == Stage.PREFILL:
        q, contexts, n = workload.input_len, (workload.input_len,), plan.prefill_minibatches
    else:
        q, contexts, n = 1, tuple(workload.decode_contexts()), 1
    return StageContext(
        batch=workload.batch,
        q=q,
        contexts=contexts,
        minibatches=n,
        weight_tier=weight_tier or plan.weight_tier,
        kv_tier=plan.kv_tier,
        cpu_isa=plan.stage_cpu_isa(stage),
        pinned_weights=plan.pinned_weights,
        overlap=plan.overlap,
        mode=mode,
        cpu_kv_passes=cpu_kv_passes,
        expert_fetch=plan.expert_fetch,
        precision=workload.precision,
        kv_on_gpu=plan.streamed_kv_on_gpu,
    )


def _breakdown(
    stage: Stage,
    policy: tuple[Device, ...],
    terms: StageTerms,
    streamed: int,
    resident_times: SublayerTimes,
    resident: int,
    streamed_label: str = "streamed",
) -> list[BreakdownRow]:
    rows: list[BreakdownRow] = []
    n = terms.context.minibatches
    for i, sub in enumerate(SUBLAYERS):
        dev = policy[i]
        nxt = policy[(i + 1) % len(SUBLAYERS)]
        on_cpu = dev == Device.CPU
        t = terms.times
        compute = float(np.mean(t.compute_s(i, policy))) * n
        mem = float(np.mean(t.cpu_memory_s[i] if on_cpu else t.gpu_memory_s[i])) * n
        compute_bound = bool(np.mean(t.cpu_compute_bound[i] if on_cpu else t.gpu_compute_bound[i]) >= 0.5)
        pcie = 0.0 if on_cpu else float(terms.weight_h2d_s[i]) + float(np.mean(terms.kv_copy_s[i])) * n
        if dev != nxt:
            cross = terms.cross_h2d_s[i] if on_cpu else terms.cross_d2h_s[i]
            pcie += float(np.mean(cross)) * n
        bound = "pcie" if pcie > compute else ("compute" if compute_bound else "memory")
        if streamed:
            rows.append(BreakdownRow(stage, streamed_label, streamed, sub.value, dev, compute, mem, pcie, bound))
        if resident:
            rt = float(np.mean(resident_times.compute_s(i, ALL_GPU))) * n
            rm = float(np.mean(resident_times.gpu_memory_s[i])) * n
            rb = "compute" if bool(np.mean(resident_times.gpu_compute_bound[i]) >= 0.5) else "memory"
            rows.append(BreakdownRow(stage, "resident", resident, sub.value, Device.GPU, rt, rm, 0.0, rb))
    return rows


def predict(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    plan: Plan,
    mode: CostMode | str = CostMode.OVERLAP,
    cpu_kv_passes: float = 1.0,
    known_terms: Optional[Mapping[StageContext, StageTerms]] = None,
) -> Prediction:
    """Predict TTFT, TPOT, latency, throughput, memory and a per-sublayer breakdown of one plan.

    ``cpu_kv_passes``: passes CPU attention makes over the cached K/V bytes; 1 for this project's runtime,
    more for a peer system executing the same plan (the FlexGen baseline, lia_model.baselines).
    ``known_terms``: streamed layers' terms a caller already worked out on this system and model, by context
    (``streamed_layer_terms`` with every prefill vector simulated where the pass is the pipeline: the optimiser's
    tables, ``SpaceTables.exact_streamed_terms``); a context found there is not priced again (the same function
    of the same arguments, so the same numbers)."""
    if cpu_kv_passes < 1.0:
        raise LiaInputError(
            "cpu_kv_passes", f"must be at least 1, got {cpu_kv_passes:g}", "use 1 (one read of the cache)"
        )
    mode = CostMode(mode)
    make_workload(workload.batch, workload.input_len, workload.output_len, model)  # context limit check
    check_precision(system, workload.precision, mode)
    check_plan_against(plan, model.num_layers, workload.batch)
    for isa_field in ("prefill_cpu_isa", "decode_cpu_isa"):
        isa = getattr(plan, isa_field)
        if isa not in system.cpu.isa or not system.cpu.isa[isa].present:
            present = ", ".join(i.value for i, s in system.cpu.isa.items() if s.present)
            raise LiaInputError(f"plan.{isa_field}", f"{system.cpu.name} has no {isa.value}", f"use one of: {present}")
    for tier_field in ("weight_tier", "kv_tier"):
        system.tier(getattr(plan, tier_field))  # raises a clear error when the tier does not exist

    resident = plan.gpu_resident_layers
    streamed = model.num_layers - resident
    # streamed layers by weight tier: K_cxl of them read their weights from CXL, the rest from DDR
    in_cxl = plan.cxl_weight_layer_count(streamed)
    kinds = [(tier, count) for tier, count in ((HostTier.DDR, streamed - in_cxl), (HostTier.CXL, in_cxl)) if count]
    if plan.cxl_weight_layers:
        system.tier(HostTier.CXL)  # a clear error when the system has no CXL
    stages: dict[Stage, StageReport] = {}
    rows: list[BreakdownRow] = []
    totals: dict[Stage, np.ndarray] = {}
    for stage, policy in ((Stage.PREFILL, plan.prefill_policy), (Stage.DECODE, plan.decode_policy)):
        # the head runs once per pass, on its device (with the stage's ISA when that is the CPU)
        head = head_time_s(system, model, workload.batch, head_device(plan), plan.stage_cpu_isa(stage))
        ctx = stage_context(workload, plan, stage, mode, cpu_kv_passes)
        if not ctx.contexts:
            totals[stage] = np.zeros(0)
            stages[stage] = StageReport(stage, np.zeros(0), np.zeros(0), head, (), {})
            continue
        feats = policy_features(policy)
        resident_s, resident_times = resident_layer_time(system, model, ctx)
        streamed_total = np.zeros(len(ctx.contexts))
        report: Optional[tuple] = None
        fill = stage == Stage.PREFILL and pass_start_fill(system, ctx)
        for tier, count in kinds or [(plan.weight_tier, 0)]:
            tier_ctx = stage_context(workload, plan, stage, mode, cpu_kv_passes, weight_tier=tier)
            terms = (known_terms or {}).get(tier_ctx) or streamed_layer_terms(
                system, model, tier_ctx, simulate_every=fill
            )
            layer_s = terms.layer_time(feats)
            streamed_total = streamed_total + count * layer_s
            if report is None or count > report[0]:  # the busier kind speaks for the stage's bound
                report = (count, terms)
            label = "streamed" if tier == plan.weight_tier else "streamed, weights in CXL"
            rows.extend(_breakdown(stage, policy, terms, count, resident_times, 0, label))
        rows.extend(_breakdown(stage, policy, report[1], 0, resident_times, resident))
        terms = report[1]
        if fill:  # one weight tier (no CXL): the two-buffer pipeline from the pass start
            totals[stage] = prefill_pass_s(resident * resident_s, streamed, *terms.fill_parts(feats)) + head
        else:
            totals[stage] = resident * resident_s + streamed_total + head
        streamed_s = streamed_total / streamed if streamed else terms.layer_time(feats)
        busy = {r: form.evaluate(feats) for r, form in terms.resources.items()}
        bound = tuple(terms.bound(feats)) if streamed else ()
        slowdown = 1.0
        if terms.cpu_scale is not None and streamed:
            slowdown = float(np.mean(terms.cpu_scale[policy_index(policy)]))
        stages[stage] = StageReport(stage, streamed_s, resident_s, head, bound, busy, slowdown, terms.cpu_slowed)

    ttft = float(totals[Stage.PREFILL][0])
    tpot = tuple(float(x) for x in totals[Stage.DECODE])
    latency = ttft + sum(tpot)
    memory = memory_use(system, model, workload, plan)
    shortfalls = tuple(
        Shortfall(t, u.required_gb, u.available_gb, u.shortfall_gb) for t, u in memory.items() if not u.fits
    )
    return Prediction(
        system=system.name,
        model=model.name,
        workload=workload,
        plan=plan,
        mode=mode,
        feasible=not shortfalls,
        shortfalls=shortfalls,
        memory=memory,
        ttft_s=ttft,
        tpot_s=tpot,
        latency_s=latency,
        throughput_tokens_per_s=workload.batch * workload.output_len / latency,
        stages=stages,
        breakdown=tuple(rows),
    )
