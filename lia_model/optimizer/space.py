"""The plan space the optimiser searches, and the cost tables both exact solvers read.

The space (for one batch B):
  prefill policy, decode policy     any of 2^6 x 2^6 vectors
  GPU-resident layers N_res         0 .. num_layers
  prefill minibatches n             {1, 2, 4, 8}, dividing B
  KV tier                           DDR, or CXL where the system has it
  weights in CXL K_cxl              0 .. K streamed layers keep their weights in CXL, the other K - K_cxl in
                                    DDR (0 without CXL): any split of the weights between the tiers
  expert fetch                      MoE models: all experts prefetched, or the routed ones on demand
fixed: pinned weights, weight prefetch overlap (never slower in the model), the CPU's best ISA, and the
embeddings and LM head on the GPU (so an all-CPU policy with no resident layer still runs its head there).
For the throughput objectives B is chosen too, from ``batch_candidates``: powers of two up to the largest
batch that fits, that largest batch, and the largest batch at which every layer stays GPU-resident.

``SpaceTables`` holds, per combination of the discrete knobs other than the policies, N_res and K_cxl, and
per weight tier, the cost terms of a streamed layer (costterms), the resident layer's times and the memory
constants. The ILP and the enumerator both read the layer time of all 64 policy vectors from those terms,
so both optimise exactly the model that predict() evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

from lia_model.costmodel import stage_context
from lia_model.costterms import CostMode, StageTerms, head_time_s, resident_layer_time, streamed_layer_terms
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, memory_constants
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, CpuIsa, Device, ExpertFetch, HostTier, Plan
from lia_model.sublayers import Stage
from lia_model.workload import Workload

MINIBATCH_CANDIDATES = (1, 2, 4, 8)


def minibatch_candidates(batch: int) -> tuple[int, ...]:
    return tuple(n for n in MINIBATCH_CANDIDATES if n <= batch and batch % n == 0)


def tier_candidates(system: SystemSpec) -> tuple[HostTier, ...]:
    return (HostTier.DDR, HostTier.CXL) if system.has_cxl else (HostTier.DDR,)


def space_isa(system: SystemSpec) -> CpuIsa:
    return system.cpu.best_isa()


def template_plan(system: SystemSpec) -> Plan:
    """The fixed knobs of every plan in the space."""
    return Plan(prefill_policy=ALL_GPU, decode_policy=ALL_GPU, pinned_weights=True, overlap=True,
                cpu_isa=space_isa(system), head_device=Device.GPU, label="optimum")


def expert_fetch_candidates(model: ModelSpec) -> tuple[ExpertFetch, ...]:
    return (ExpertFetch.ALL, ExpertFetch.ROUTED) if model.is_moe else (ExpertFetch.ALL,)


@dataclass(frozen=True)
class Combo:
    """The discrete knobs other than the policies, N_res and the weight split."""

    minibatches: int
    kv_tier: HostTier
    expert_fetch: ExpertFetch = ExpertFetch.ALL

    def decode_key(self, weight_tier: HostTier) -> tuple[HostTier, ExpertFetch, HostTier]:
        return self.kv_tier, self.expert_fetch, weight_tier

    @property
    def label(self) -> str:
        return f"{self.minibatches}_{self.kv_tier.value}_{self.expert_fetch.value}"


@dataclass
class SpaceTables:
    system: SystemSpec
    model: ModelSpec
    workload: Workload
    mode: CostMode
    combos: tuple[Combo, ...]
    weight_tiers: tuple[HostTier, ...]                     # DDR, and CXL where the system has it
    prefill: dict[tuple[Combo, HostTier], StageTerms]      # streamed layer, prefill (one step), per weight tier
    decode: dict[tuple[HostTier, ExpertFetch, HostTier], StageTerms]   # Combo.decode_key: (L_out - 1 steps)
    resident_prefill_s: dict[int, float]                   # per minibatch count
    resident_decode_s: np.ndarray                          # per step
    head_s: float
    memory: dict[int, MemoryConstants]                     # per minibatch count

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def decode_steps(self) -> int:
        return self.workload.decode_steps

    @property
    def head_total_s(self) -> float:
        """The LM head runs once in prefill and once per decode step."""
        return self.head_s * (1 + self.decode_steps)


def build_tables(system: SystemSpec, model: ModelSpec, workload: Workload,
                 mode: CostMode = CostMode.OVERLAP) -> SpaceTables:
    base = template_plan(system)
    tiers = tier_candidates(system)
    combos = tuple(Combo(n, kv, ef) for n, kv, ef in product(minibatch_candidates(workload.batch), tiers,
                                                              expert_fetch_candidates(model)))
    prefill: dict[tuple[Combo, HostTier], StageTerms] = {}
    decode: dict[tuple[HostTier, ExpertFetch, HostTier], StageTerms] = {}
    resident_prefill: dict[int, float] = {}
    resident_decode = np.zeros(workload.decode_steps)
    memory: dict[int, MemoryConstants] = {}
    for c in combos:
        plan = base.model_copy(update={"prefill_minibatches": c.minibatches, "kv_tier": c.kv_tier,
                                       "expert_fetch": c.expert_fetch})
        for wt in tiers:
            ctx = stage_context(workload, plan, Stage.PREFILL, mode, weight_tier=wt)
            prefill[(c, wt)] = streamed_layer_terms(system, model, ctx)
            if c.minibatches not in resident_prefill:
                resident_prefill[c.minibatches] = float(resident_layer_time(system, model, ctx)[0][0])
                memory[c.minibatches] = memory_constants(system, model, workload, c.minibatches)
            key = c.decode_key(wt)
            if key not in decode and workload.decode_steps > 0:
                dctx = stage_context(workload, plan, Stage.DECODE, mode, weight_tier=wt)
                decode[key] = streamed_layer_terms(system, model, dctx)
                resident_decode = resident_layer_time(system, model, dctx)[0]
    return SpaceTables(system, model, workload, mode, combos, tiers, prefill, decode, resident_prefill,
                       resident_decode, head_time_s(system, model, workload.batch), memory)


def tidy_policies(prefill: tuple, decode: tuple, all_resident: bool, decode_steps: int) -> tuple[tuple, tuple]:
    """Canonical policies for knobs the cost does not see: with every layer resident the policies are
    unused (all-GPU is reported); with no decode step the decode policy is unused, and repeating the
    prefill policy needs no more GPU buffers than any other choice (c = p_pre AND p_dec is then p_pre,
    the largest possible), so it is reported."""
    if all_resident:
        return ALL_GPU, ALL_GPU
    if decode_steps == 0:
        return prefill, prefill
    return prefill, decode
