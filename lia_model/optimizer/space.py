"""The plan space the optimiser searches, and the cost tables both exact solvers read.

The space (for one batch B):
  prefill policy, decode policy     any of 2^6 x 2^6 vectors
  GPU-resident layers N_res         0 .. num_layers
  prefill minibatches n             every divisor of B up to MAX_PREFILL_MINIBATCHES (equal chunks)
  prefill CPU ISA, decode CPU ISA   every ISA the CPU has, chosen per stage
  KV tier                           DDR, or CXL where the system has it
  weights in CXL K_cxl              0 .. K streamed layers keep their weights in CXL, the other K - K_cxl in
                                    DDR (0 without CXL): any split of the weights between the tiers
  expert fetch                      MoE models: all experts prefetched, or the routed ones on demand
fixed: pinned weights, weight prefetch overlap (never slower in the model), the embeddings and LM head
on the GPU (so an all-CPU policy with no resident layer still runs its head there), and the streamed layers'
KV cache in the host tier (``plan.streamed_kv_on_gpu``, FlexGen's cache on the GPU, is priced by predict() and
run by the runtime, but not searched: the flexgen baseline uses it).
For the throughput objectives B is chosen too, from 1 to the largest batch that fits (``batch.py``).

``SpaceTables`` holds, per combination of the discrete knobs other than the policies, N_res and K_cxl, and
per weight tier and CPU ISA, the cost terms of a streamed layer (costterms), the resident layer's times and
the memory constants. The ILP and the enumerator both read the layer time of all 64 policy vectors from
those terms, so both optimise exactly the model that predict() evaluates.

ISA pruning (exact): the ISA enters a stage's cost only through the CPU time of each sublayer and of the
fused CPU attention (``costterms.sublayer_times``) and the passes its attention kernel makes over the KV
cache (``costterms.cpu_kv_passes``: host-memory traffic), and every term of a layer's time (the simulated
schedule included) is non-decreasing in those. An ISA whose CPU time is >= another kept ISA's for every
sublayer and step can therefore never give a strictly faster plan; ``build_tables`` drops it
(``prune_isas=False`` keeps every ISA, for the tests' brute force).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import product
from typing import Optional

import numpy as np

from lia_model.costmodel import stage_context
from lia_model.costterms import (
    NUM_POLICIES,
    CostMode,
    StageContext,
    StageTerms,
    SublayerTimes,
    chunk_work,
    cpu_kv_passes,
    gpu_sublayer_times,
    head_time_s,
    pass_start_fill,
    resident_layer_time,
    streamed_layer_terms,
    sublayer_times,
)
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, memory_constants
from lia_model.models import ModelSpec
from lia_model.plan import ALL_GPU, CpuIsa, Device, ExpertFetch, HostTier, Plan
from lia_model.sublayers import Stage
from lia_model.workload import Workload

# The largest prefill minibatch count the optimiser searches. Why a cap: the simulated schedule of n chunks
# costs up to O(n^2) per policy vector; with every divisor of B (n up to B) one solve at B = 960 took 11 s
# (gnr-a100, OPT-30B, 32/32) and a throughput query, which solves up to 16 batches, minutes; with the cap,
# 0.3 s. What it gives up: pipelining n chunks saves the pipeline's fill and drain, which shrinks like 1/n,
# while every chunk pays its launch overheads. ``python tools/minibatch_cap.py`` prices it on 36 cases: with
# 2016-token prompts at B = 128 the uncapped optimum is n = 128 (one sequence per chunk) and the cap costs up
# to 0.51% of latency; every other case picks n <= 32 either way. predict() still prices any n a user gives.
MAX_PREFILL_MINIBATCHES = 64


def divisors(batch: int) -> tuple[int, ...]:
    """Every n that splits the batch into equal chunks: the divisors of B."""
    small = [n for n in range(1, int(batch**0.5) + 1) if batch % n == 0]
    return tuple(sorted(set(small) | {batch // n for n in small}))


def minibatch_candidates(batch: int, cap: int | None = None) -> tuple[int, ...]:
    """The prefill minibatch counts the optimiser searches: the divisors of B up to ``cap``
    (default MAX_PREFILL_MINIBATCHES)."""
    limit = MAX_PREFILL_MINIBATCHES if cap is None else cap
    return tuple(n for n in divisors(batch) if n <= limit)


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
    return Plan(
        prefill_policy=ALL_GPU,
        decode_policy=ALL_GPU,
        pinned_weights=True,
        overlap=True,
        prefill_cpu_isa=best,
        decode_cpu_isa=best,
        head_device=Device.GPU,
        label="optimum",
    )


def expert_fetch_candidates(model: ModelSpec) -> tuple[ExpertFetch, ...]:
    return (ExpertFetch.ALL, ExpertFetch.ROUTED) if model.is_moe else (ExpertFetch.ALL,)


def contains(
    system: SystemSpec,
    plan: Plan,
    batch: int,
    model: ModelSpec | None = None,
    batch_choices: tuple[int, ...] | None = None,
) -> bool:
    """Whether the space above holds ``plan`` at ``batch``, spelled with the candidate functions the solvers
    enumerate (one definition of the space): the fixed knobs of ``template_plan`` (pinned weights, overlap,
    embeddings and LM head on the GPU), a minibatch count from ``minibatch_candidates``, tiers from
    ``tier_candidates`` (a weight split only with CXL), ISAs from ``isa_candidates`` and, given the model, an
    expert fetch from ``expert_fetch_candidates``. Policies, N_res and K_cxl are free. With a throughput
    objective the batch is a knob too: ``batch_choices`` (the batch search's candidates) are those it may pick.
    """
    from lia_model.plan import head_device

    if batch_choices is not None and batch not in batch_choices:
        return False
    fixed = template_plan(system)
    tiers, isas = tier_candidates(system), isa_candidates(system)
    return (
        plan.pinned_weights == fixed.pinned_weights
        and plan.overlap == fixed.overlap
        and head_device(plan) == fixed.head_device
        and plan.prefill_minibatches in minibatch_candidates(batch)
        and plan.weight_tier in tiers
        and plan.kv_tier in tiers
        and not plan.streamed_kv_on_gpu
        and (plan.cxl_weight_layers == 0 or HostTier.CXL in tiers)
        and plan.prefill_cpu_isa in isas
        and plan.decode_cpu_isa in isas
        and (model is None or plan.expert_fetch in expert_fetch_candidates(model))
    )


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
    weight_tiers: tuple[HostTier, ...]  # DDR, and CXL where the system has it
    isas: tuple[CpuIsa, ...]  # every ISA of the CPU, best peak first
    # streamed layer, prefill (one step), per weight tier, by CPU ISA (the ISAs not pruned)
    prefill: dict[tuple[Combo, HostTier], dict[CpuIsa, StageTerms]]
    # streamed layer, decode (L_out - 1 steps), per Combo.decode_key, by CPU ISA
    decode: dict[tuple[HostTier, ExpertFetch, HostTier], dict[CpuIsa, StageTerms]]
    resident_prefill_s: dict[int, float]  # per minibatch count
    resident_decode_s: np.ndarray  # per step
    head_s: float
    memory: dict[int, MemoryConstants]  # per minibatch count
    # True: the prefill terms' schedules are lower bounds, not simulated (build_tables(prefill_bound=True)):
    # ``simulate_prefill`` makes a (combo, ISA)'s terms exact
    prefill_bound: bool = False
    times_cache: dict = dataclasses.field(default_factory=dict)  # chunk_times of the contexts priced so far
    # per (combo, ISA) choice, the policy vectors [64] whose prefill schedules ``simulate_prefill`` made exact
    simulated: dict = dataclasses.field(default_factory=dict)
    derived: dict = dataclasses.field(default_factory=dict)  # arrays read off terms, by terms (enumerate._kept)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def decode_steps(self) -> int:
        return self.workload.decode_steps

    def prefill_isas(self, combo: Combo) -> tuple[CpuIsa, ...]:
        """The prefill ISAs kept for a combo (the same for every weight tier)."""
        return tuple(self.prefill[(combo, self.weight_tiers[0])])

    def decode_isas(self, combo: Combo) -> tuple[CpuIsa, ...]:
        if self.decode_steps == 0:
            return (self.isas[0],)
        return tuple(self.decode[combo.decode_key(self.weight_tiers[0])])

    @property
    def head_total_s(self) -> float:
        """The LM head runs once in prefill and once per decode step."""
        return self.head_s * (1 + self.decode_steps)

    def exact_streamed_terms(self) -> dict[StageContext, StageTerms]:
        """The streamed layers' terms these tables hold, by context, where they are predict()'s (costmodel.predict's
        ``known_terms``): every decode term, and the prefill terms of the (combo, ISA) choices simulated for every
        vector (bounded schedules are not)."""
        known = {terms.context: terms for by_isa in self.decode.values() for terms in by_isa.values()}
        for (combo, _), by_isa in self.prefill.items():
            for isa, terms in by_isa.items():
                if simulated_vectors(self, combo, isa).all():
                    known[terms.context] = terms
        return known


def _with_isa(ctx: StageContext, isa: CpuIsa) -> StageContext:
    return dataclasses.replace(ctx, cpu_isa=isa)


def _cpu_profile(times) -> np.ndarray:
    """What an ISA changes in a streamed layer's terms: every sublayer's CPU time, and the time of the two
    attention sublayers together on the CPU (with calibrated kernel tables they run fused, at
    score + context + fused delta)."""
    fused = times.cpu_s[1] + times.cpu_s[2] + times.cpu_fused_delta_s
    return np.vstack([times.cpu_s, fused[None, :]])


def chunk_times(cache: Optional[dict], system: SystemSpec, model: ModelSpec, ctx: StageContext) -> SublayerTimes:
    """``sublayer_times`` of one chunk of ``ctx``, kept in ``cache`` (None: not kept) for the next caller with the
    same context: the ISA pruning, the streamed layer and the resident layer read the same times. A cache
    serves one system and one model; the times are a pure function of the four arguments. The chunk's
    ``sublayer_work`` and the GPU half of its times are kept too: contexts that differ only in ISA or tiers share
    them."""
    chunk = ctx.batch // ctx.minibatches
    if cache is None:
        return sublayer_times(system, model, ctx, chunk)
    hit = cache.get(ctx)
    if hit is None:
        work_key = ("sublayer_work", chunk, ctx.q, ctx.contexts, ctx.precision)
        shared = cache.get(work_key)
        if shared is None:
            work = chunk_work(model, ctx, chunk)
            shared = cache[work_key] = (work, gpu_sublayer_times(system, ctx, work))
        hit = cache[ctx] = sublayer_times(system, model, ctx, chunk, *shared)
    return hit


def layer_times(
    cache: Optional[dict], system: SystemSpec, model: ModelSpec, ctx: StageContext
) -> Optional[SublayerTimes]:
    """The ``times=`` a streamed or resident layer's terms take: ``chunk_times``, or None in the paper mode (which
    prices its own)."""
    return None if ctx.mode == CostMode.PAPER else chunk_times(cache, system, model, ctx)


def useful_isas(
    system: SystemSpec,
    model: ModelSpec,
    contexts: list[StageContext],
    isas: tuple[CpuIsa, ...],
    prune: bool = True,
    cache: Optional[dict] = None,
) -> tuple[CpuIsa, ...]:
    """The ISAs not dominated in CPU time in any of these stage contexts (see the module docstring; one
    ISA serves every weight tier of a stage, so dominance must hold in each tier's context). ``cache``: see
    ``chunk_times``."""
    if not prune or len(isas) == 1:
        return isas
    # the ISA's attention kernel's passes over the KV cache set the CPU attention's host-memory traffic too
    cpu = {
        isa: np.concatenate(
            [
                *(_cpu_profile(chunk_times(cache, system, model, _with_isa(ctx, isa))).ravel() for ctx in contexts),
                [cpu_kv_passes(system, _with_isa(contexts[0], isa))],
            ]
        )
        for isa in isas
    }
    kept: list[CpuIsa] = []
    for isa in isas:  # best peak first: among equal times the first one stays
        if any(np.all(cpu[k] <= cpu[isa]) for k in kept):
            continue
        kept = [k for k in kept if not np.all(cpu[isa] <= cpu[k])] + [isa]
    return tuple(i for i in isas if i in kept)


def cxl_never_faster(system: SystemSpec) -> bool:
    """The CPU reads CXL no faster than DDR: then an ISA's CPU time dominance found with everything in DDR
    holds for every tier choice (a CPU sublayer takes max(FLOP time, memory time) + overhead, and only the
    memory time grows when data moves to the slower tier)."""
    return system.cxl is None or system.cxl.read_gbps <= system.ddr.read_gbps


def _times_fingerprint(times: SublayerTimes) -> bytes:
    """Every number of a chunk's times (its work aside: a function of the stage context), as bytes: equal bytes,
    equal times, so terms that carry one caller's times object serve another's."""
    arrays = (
        times.cpu_s,
        times.gpu_s,
        times.cpu_compute_bound,
        times.gpu_compute_bound,
        times.cpu_memory_s,
        times.gpu_memory_s,
        times.cpu_fused_delta_s,
        times.gpu_fused_delta_s,
    )
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays) + bytes([times.fused_attention])


def shared_layer_terms(
    terms_cache: Optional[dict],
    system: SystemSpec,
    model: ModelSpec,
    ctx: StageContext,
    times: Optional[SublayerTimes],
    simulate_every: bool = False,
    schedule_bound: bool | np.ndarray = False,
) -> StageTerms:
    """``streamed_layer_terms`` of a layer, kept in ``terms_cache`` (None: not kept) for the next caller with the
    same context and the same chunk times. A cache serves one model and the systems of one batch search: a
    system and its ``batch.flat_matmul_system`` variants, which differ only in the linear layers' efficiency
    tables, and those enter a layer's terms only through its chunk times (``sublayer_times``). So equal
    (context, times) give equal terms: the relaxed bound of a batch range priced at its top batch B reads the
    terms the exact solve at B reads wherever the flattened efficiency is the one at B (the tables rise with
    the rows), and the decode terms are the costly ones (a simulated schedule over every step). Without
    ``schedule_bound`` the schedules are simulated, every vector's with ``simulate_every``."""
    if terms_cache is None or times is None or not isinstance(schedule_bound, bool):  # (times None: the paper
        # mode, which prices its own; a bound on some vectors only: simulate_prefill's, not shared)
        return streamed_layer_terms(system, model, ctx, simulate_every, times, schedule_bound)
    key = (ctx, _times_fingerprint(times), schedule_bound, bool(simulate_every) and not schedule_bound)
    hit = terms_cache.get(key)
    if hit is None:
        hit = terms_cache[key] = streamed_layer_terms(system, model, ctx, simulate_every, times, schedule_bound)
    return hit


def prefill_terms(
    system: SystemSpec,
    model: ModelSpec,
    ctx: StageContext,
    cache: dict,
    bound: bool | np.ndarray = False,
    terms_cache: Optional[dict] = None,
) -> StageTerms:
    """A streamed prefill layer's terms (``ctx`` with its ISA); ``bound``: its schedules lower bounds
    (streamed_layer_terms' ``schedule_bound``) instead of simulated, or ([64] bool) those of the vectors it marks.
    ``terms_cache``: see ``shared_layer_terms``."""
    return shared_layer_terms(
        terms_cache,
        system,
        model,
        ctx,
        layer_times(cache, system, model, ctx),
        simulate_every=pass_start_fill(system, ctx),
        schedule_bound=bound,
    )


def simulated_vectors(tables: SpaceTables, combo: Combo, isa: CpuIsa) -> np.ndarray:
    """The policy vectors [64] whose prefill schedules are exact in a (combo, ISA) choice's terms."""
    if not tables.prefill_bound:
        return np.ones(NUM_POLICIES, dtype=bool)
    return tables.simulated.get((combo, isa), np.zeros(NUM_POLICIES, dtype=bool))


def simulate_prefill(tables: SpaceTables, combo: Combo, isa: CpuIsa, vectors: Optional[np.ndarray] = None) -> None:
    """Replace a (combo, prefill ISA)'s bounded prefill terms, every weight tier's, by the simulated ones: those of
    the policy vectors ``vectors`` marks ([64] bool, None: all) and of the vectors simulated before; the others keep
    their lower bounds. A vector's terms do not depend on which other vectors are simulated (each row of the
    terms is that vector's), so simulating in several steps gives the same numbers as at once."""
    if not tables.prefill_bound:
        return
    done = simulated_vectors(tables, combo, isa)
    wanted = done | (True if vectors is None else np.asarray(vectors, dtype=bool))
    if np.array_equal(wanted, done):
        return  # already simulated
    tables.simulated[(combo, isa)] = wanted
    bound = False if wanted.all() else ~wanted  # the vectors left bounded
    for wt in tables.weight_tiers:
        terms = tables.prefill[(combo, wt)]
        if terms[isa].schedule_s is not None:  # (paper and additive modes have no schedule to simulate)
            terms[isa] = prefill_terms(tables.system, tables.model, terms[isa].context, tables.times_cache, bound)


def simulate_every_prefill(tables: SpaceTables) -> SpaceTables:
    """The tables with every prefill term simulated: what ``build_tables`` gives without ``prefill_bound`` (the
    same terms of the same contexts), from tables that ``enumerate.lazy_optimum`` simulated in part."""
    for combo in tables.combos:
        for isa in tables.prefill_isas(combo):
            simulate_prefill(tables, combo, isa)
    tables.prefill_bound = False
    return tables


def build_tables(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    mode: CostMode = CostMode.OVERLAP,
    prune_isas: bool = True,
    prefill_bound: bool = False,
    terms_cache: Optional[dict] = None,
) -> SpaceTables:
    """The tables of the space at this batch. ``prefill_bound``: the streamed prefill layers' schedules are
    lower bounds (``simulate_prefill`` makes them exact where needed; enumerate.lazy_optimum). ``terms_cache``:
    streamed layers' terms shared with the batch search's relaxed bounds (``shared_layer_terms``)."""
    base = template_plan(system)
    tiers = tier_candidates(system)
    isas = isa_candidates(system)
    combos = tuple(
        Combo(n, kv, ef)
        for n, kv, ef in product(minibatch_candidates(workload.batch), tiers, expert_fetch_candidates(model))
    )
    prefill: dict[tuple[Combo, HostTier], dict[CpuIsa, StageTerms]] = {}
    decode: dict[tuple[HostTier, ExpertFetch, HostTier], dict[CpuIsa, StageTerms]] = {}
    resident_prefill: dict[int, float] = {}
    resident_decode = np.zeros(workload.decode_steps)
    memory: dict[int, MemoryConstants] = {}
    # ISA dominance from the all-DDR contexts stands for every tier when CXL is no faster (cxl_never_faster)
    shared = cxl_never_faster(system)
    useful: dict[tuple, tuple[CpuIsa, ...]] = {}
    dec_useful: dict[tuple, tuple[CpuIsa, ...]] = {}
    cache: dict = {}  # sublayer times by stage context (chunk_times)

    for c in combos:
        plan = base.model_copy(
            update={"prefill_minibatches": c.minibatches, "kv_tier": c.kv_tier, "expert_fetch": c.expert_fetch}
        )
        contexts = {wt: stage_context(workload, plan, Stage.PREFILL, mode, weight_tier=wt) for wt in tiers}
        key = (c.minibatches, c.expert_fetch) + (() if shared else (c.kv_tier,))
        if key not in useful:
            useful[key] = useful_isas(
                system, model, [contexts[HostTier.DDR]] if shared else list(contexts.values()), isas, prune_isas, cache
            )
        for wt in tiers:
            prefill[(c, wt)] = {
                isa: prefill_terms(system, model, _with_isa(contexts[wt], isa), cache, prefill_bound, terms_cache)
                for isa in useful[key]
            }
        if c.minibatches not in resident_prefill:
            ddr = contexts[HostTier.DDR]
            resident_prefill[c.minibatches] = float(
                resident_layer_time(system, model, ddr, layer_times(cache, system, model, ddr))[0][0]
            )
            memory[c.minibatches] = memory_constants(system, model, workload, c.minibatches)
        if workload.decode_steps > 0 and c.decode_key(tiers[0]) not in decode:
            dcontexts = {wt: stage_context(workload, plan, Stage.DECODE, mode, weight_tier=wt) for wt in tiers}
            dkey = (c.expert_fetch,) + (() if shared else (c.kv_tier,))
            if dkey not in dec_useful:
                dec_useful[dkey] = useful_isas(
                    system,
                    model,
                    [dcontexts[HostTier.DDR]] if shared else list(dcontexts.values()),
                    isas,
                    prune_isas,
                    cache,
                )
            dec_isas = dec_useful[dkey]
            for wt in tiers:
                decode[c.decode_key(wt)] = {
                    isa: shared_layer_terms(
                        terms_cache,
                        system,
                        model,
                        _with_isa(dcontexts[wt], isa),
                        layer_times(cache, system, model, _with_isa(dcontexts[wt], isa)),
                    )
                    for isa in dec_isas
                }
            ddr = dcontexts[HostTier.DDR]
            resident_decode = resident_layer_time(system, model, ddr, layer_times(cache, system, model, ddr))[0]
    return SpaceTables(
        system,
        model,
        workload,
        mode,
        combos,
        tiers,
        isas,
        prefill,
        decode,
        resident_prefill,
        resident_decode,
        head_time_s(system, model, workload.batch),
        memory,
        prefill_bound,
        cache,
    )


def tidy_plan(plan: Plan, all_resident: bool, decode_steps: int, best_isa: CpuIsa) -> Plan:
    """Canonical values for knobs the cost does not see: with every layer resident the policies are
    unused (all-GPU is reported); with no decode step the decode policy is unused, and repeating the
    prefill policy needs no more GPU buffers than any other choice (c = p_pre AND p_dec is then p_pre,
    the largest possible), so it is reported; a stage with no CPU sublayer (or unused) reports the best ISA."""
    prefill, decode = plan.prefill_policy, plan.decode_policy
    if all_resident:
        prefill, decode = ALL_GPU, ALL_GPU
    elif decode_steps == 0:
        decode = prefill
    pre_isa = plan.prefill_cpu_isa if Device.CPU in prefill else best_isa
    dec_isa = plan.decode_cpu_isa if Device.CPU in decode and decode_steps > 0 else best_isa
    if decode_steps == 0:
        dec_isa = pre_isa
    return plan.model_copy(
        update={
            "prefill_policy": prefill,
            "decode_policy": decode,
            "prefill_cpu_isa": pre_isa,
            "decode_cpu_isa": dec_isa,
        }
    )
