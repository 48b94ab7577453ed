"""Exact batch search for the throughput objectives: the best B of 1 .. B_max, by branch and bound.

throughput(B) = B L_out / latency*(B), where latency*(B) is the optimum of the plan space at batch B
(``enumerate.py``, exact). It is not monotone in B: the prefill minibatch count must divide B, a TPOT bound
forces slower plans as B grows, and the all-resident regime ends at some B. So every B from 1 to the
largest batch that fits memory is a candidate; most are ruled out by an upper bound instead of solved.

Largest batch that fits (bisection, exact): the smallest footprint of batch B (all-CPU policies, the
workspace of n = B, i.e. one sequence per prefill chunk) grows with B (KV, activations and workspace all do),
so "some plan fits" is true up to one B and false after it.

Upper bound on throughput over a range [lo, hi] of batches, from a relaxation of the cost model:
  1. linear-layer efficiency tables replaced by their largest value over the rows the range can see (a rate
     never above the real one); attention efficiency is indexed by the new tokens per sequence, not by B;
  2. prefill priced at n = 1 as the largest resource busy time (CPU, GPU, H2D with the weights, D2H, DDR,
     CXL; additive mode: its serial sum) -- with n chunks of b = B/n every pipelined term is >= n x a
     chunk's busy time >= the whole batch's busy time at n = 1 under (1), and a resident layer's n chunks
     take >= one chunk of B;
  2'. where the prefill pass is the two-buffer pipeline (costterms.prefill_pass_s, no CXL): its parts priced
     the same way, compute >= max(CPU, GPU, D2H busy), copy = H2D busy, throughput = DDR busy at n = 1; the
     pass is non-decreasing in each part and in N_res R_pre, so it stays a lower bound, and each of its
     forms is a sum of such terms with non-negative weights (K - 2 >= 0 where F4 applies);
  3. memory from batch lo at its smallest footprint, the TPOT and TTFT bounds from batch lo under (1) and (2)
     (each relaxed time is non-decreasing in B, so a plan that meets a bound at some B in [lo, hi] meets its
     relaxation at lo).
Under (1) every time is built from FLOPs (proportional to B), bytes (a constant plus a part proportional
to B, or the MoE experts touched, concave in B) and fixed overheads, through sums and maxima, so a plan's
relaxed latency f(B) is non-decreasing and f(B) / B is non-increasing. For B in [lo, hi]:
  latency*(B) / B >= min over plans feasible at lo of f(B) / B >= min over those plans of f(hi) / hi,
  throughput(B) <= hi L_out / (relaxed optimum with costs at hi and memory and TPOT at lo).
Ranges are split best-bound first until no range's bound beats the best batch solved (exactly) so far.
The tests check the result against solving every batch of the range.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lia_model.costmodel import stage_context
from lia_model.costterms import (
    ALL_POLICY_FEATURES,
    NUM_POLICIES,
    CostMode,
    Resource,
    head_time_s,
    pass_start_fill,
    resident_layer_time,
)
from lia_model.hardware import EfficiencyPoint, SystemSpec, interpolate_efficiency
from lia_model.models import ModelSpec
from lia_model.optimizer.enumerate import (
    ComboArrays,
    PrefillSide,
    StageConstants,
    any_plan_fits_memory,
    best_in_combo,
    least_footprint_memory,
)
from lia_model.optimizer.infeasible import largest_feasible
from lia_model.optimizer.space import (
    MAX_PREFILL_MINIBATCHES,
    _with_isa,
    expert_fetch_candidates,
    isa_candidates,
    layer_times,
    shared_layer_terms,
    template_plan,
    tier_candidates,
    useful_isas,
)
from lia_model.plan import ExpertFetch, HostTier
from lia_model.precision import BF16, Precision
from lia_model.sublayers import Stage
from lia_model.workload import Workload

LADDER_SEEDS = 4  # multiples of the minibatch cap seeded below the largest batch (search order only)

BATCH_SEARCH_CAP = 1 << 16


def largest_feasible_batch(
    system: SystemSpec,
    model: ModelSpec,
    input_len: int,
    output_len: int,
    cap: int = BATCH_SEARCH_CAP,
    all_resident: bool = False,
    precision: Precision = BF16,
) -> Optional[int]:
    """Largest batch for which some plan of the space fits memory (None when even B=1 does not); with
    ``all_resident`` the largest for which the whole model stays on the GPU.

    Exact in two steps. (1) Bisection on the relaxed test (the smallest workspace over every prefill
    minibatch count dividing B, beyond the optimiser's cap too): it only grows with B, so bisection is exact
    for it, and no larger batch fits any plan. (2) The space caps the minibatch count, so whether B fits also
    depends on B's divisors (a prime B has one chunk): walk down from the relaxed answer to the first batch
    that some plan of the space fits."""

    def fits(b: int, relaxed: bool) -> bool:
        return any_plan_fits_memory(
            system,
            model,
            Workload(batch=b, input_len=input_len, output_len=output_len, precision=precision),
            all_resident=all_resident,
            relaxed=relaxed,
        )

    if cap < 1 or not fits(1, True):
        return None
    hi = 1
    while hi < cap and fits(min(hi * 2, cap), True):
        hi = min(hi * 2, cap)
    top = largest_feasible(hi, min(hi * 2, cap), lambda b: fits(b, True))
    while top >= 1 and not fits(top, False):
        top -= 1
    return top if top >= 1 else None


def _max_efficiency(points: list[EfficiencyPoint], lo_tokens: float, hi_tokens: float) -> float:
    """The largest efficiency the table gives anywhere in [lo_tokens, hi_tokens] (interpolation is linear in
    log2(tokens) between points and flat outside, so the maximum sits at an end or at a point inside)."""
    inside = [p.efficiency for p in points if lo_tokens <= p.tokens <= hi_tokens]
    return max([interpolate_efficiency(points, lo_tokens), interpolate_efficiency(points, hi_tokens), *inside])


def flat_matmul_system(system: SystemSpec, lo_tokens: float, hi_tokens: float) -> SystemSpec:
    """The system with every linear-layer efficiency table (CPU ISAs and GPU) replaced by its largest value
    over [lo_tokens, hi_tokens] rows (relaxation 1). Attention tables are indexed by the new tokens per
    sequence q, which does not depend on B, and stay as they are."""

    def flat(points: list[EfficiencyPoint]) -> list[EfficiencyPoint]:
        return [EfficiencyPoint(tokens=1, efficiency=_max_efficiency(points, lo_tokens, hi_tokens))]

    isa = {
        k: v.model_copy(update={"matmul_efficiency": flat(v.matmul_efficiency)}) if v.present else v
        for k, v in system.cpu.isa.items()
    }
    gpu = system.gpu.model_copy(update={"matmul_efficiency": flat(system.gpu.matmul_efficiency)})
    return system.model_copy(update={"cpu": system.cpu.model_copy(update={"isa": isa}), "gpu": gpu})


@dataclass(frozen=True)
class RelaxedBatch:
    """Relaxed costs of one batch (relaxations 1 and 2): per (KV tier, expert fetch) and weight tier the
    streamed prefill and decode (summed over steps) time of every policy vector, minimised over ISAs (each
    tier apart: a lower bound also where a plan's one ISA serves both weight tiers); resident and head times."""

    prefill: dict[tuple[HostTier, ExpertFetch], dict[HostTier, np.ndarray]]
    decode: dict[tuple[HostTier, ExpertFetch], dict[HostTier, np.ndarray]]
    resident_prefill_s: float
    resident_decode_total_s: float
    head_s: float
    # per (KV tier, expert fetch), where the prefill pass is the pipeline of costterms.prefill_pass_s (no CXL):
    # lower bounds on its (compute, copy, throughput) parts at n = 1, minimised over ISAs (relaxation 2')
    prefill_fill: dict = field(default_factory=dict)


def relaxed_batch(
    prefill_system: Optional[SystemSpec],
    decode_system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    mode: CostMode,
    terms_cache: Optional[dict] = None,
) -> RelaxedBatch:
    """Prefill priced on ``prefill_system`` (skipped when None), decode and the LM head on ``decode_system``.
    ``terms_cache``: streamed layers' terms shared with the exact solves (space.shared_layer_terms)."""
    base = template_plan(decode_system)
    isas = isa_candidates(decode_system)
    tiers = tier_candidates(decode_system)
    prefill: dict = {}
    decode: dict = {}
    fills: dict = {}
    res_pre = res_dec = 0.0
    pre_cache: dict = {}  # sublayer times by stage context, one cache per system (space.layer_times)
    dec_cache: dict = {}

    for kv in tiers:
        for ef in expert_fetch_candidates(model):
            plan = base.model_copy(update={"prefill_minibatches": 1, "kv_tier": kv, "expert_fetch": ef})
            pre_t, dec_t = {}, {}
            for wt in tiers:
                if prefill_system is not None:
                    ctx = stage_context(workload, plan, Stage.PREFILL, mode, weight_tier=wt)
                    times, parts = [], []
                    for isa in useful_isas(prefill_system, model, [ctx], isas, cache=pre_cache):
                        st = shared_layer_terms(
                            terms_cache,
                            prefill_system,
                            model,
                            _with_isa(ctx, isa),
                            layer_times(pre_cache, prefill_system, model, _with_isa(ctx, isa)),
                            schedule_bound=True,  # prefill is priced from the resource busy times (2, 2')
                        )
                        if mode == CostMode.OVERLAP:
                            busy = {r: f.evaluate(ALL_POLICY_FEATURES)[:, 0] for r, f in st.resources.items()}
                            times.append(np.max(list(busy.values()), axis=0))
                            # 2': the pipeline's compute >= CPU, GPU and D2H busy time, copy = H2D busy time,
                            # throughput = DDR busy time (each at n = 1 under 1, as in 2)
                            parts.append(
                                (
                                    np.maximum.reduce(
                                        [busy[Resource.CPU], busy[Resource.GPU], busy[Resource.PCIE_D2H]]
                                    ),
                                    busy[Resource.PCIE_H2D],
                                    busy[Resource.DDR],
                                )
                            )
                        else:
                            times.append(st.layer_time(ALL_POLICY_FEATURES)[:, 0])
                    pre_t[wt] = np.min(times, axis=0)
                    if parts and pass_start_fill(prefill_system, st.context):
                        fills[(kv, ef)] = tuple(np.min([p[j] for p in parts], axis=0) for j in range(3))
                    pre_times = layer_times(pre_cache, prefill_system, model, ctx)
                    res_pre = float(resident_layer_time(prefill_system, model, ctx, pre_times)[0][0])
                if workload.decode_steps > 0:
                    dctx = stage_context(workload, plan, Stage.DECODE, mode, weight_tier=wt)
                    dec_t[wt] = np.min(
                        [
                            shared_layer_terms(
                                terms_cache,
                                decode_system,
                                model,
                                _with_isa(dctx, isa),
                                layer_times(dec_cache, decode_system, model, _with_isa(dctx, isa)),
                            ).policy_layer_times.sum(axis=1)
                            for isa in useful_isas(decode_system, model, [dctx], isas, cache=dec_cache)
                        ],
                        axis=0,
                    )
                    dec_times = layer_times(dec_cache, decode_system, model, dctx)
                    res_dec = float(resident_layer_time(decode_system, model, dctx, dec_times)[0].sum())
                else:
                    dec_t[wt] = np.zeros(NUM_POLICIES)
            prefill[(kv, ef)], decode[(kv, ef)] = pre_t, dec_t
    return RelaxedBatch(prefill, decode, res_pre, res_dec, head_time_s(decode_system, model, workload.batch), fills)


DEFAULT_MAX_SOLVES = 48  # 16 until the ninth session: gnr-h100 OPT-30B 32/32 then stopped at a 4% gap
DEFAULT_MAX_BOUNDS = 48


@dataclass(frozen=True)
class BatchSearch:
    batch: Optional[int]  # the best batch solved (None: nothing fits memory and the bound)
    throughput_tokens_per_s: float
    solved: tuple[int, ...]  # the batches solved exactly, in order
    bounds_computed: int  # relaxations evaluated
    largest_fitting_batch: Optional[int]
    gap_bound: Optional[float]  # no batch of 1 .. largest_fitting_batch beats the result by more than this
    # fraction (0.0: the result is the exact best batch; None: not proven, see
    # bounds_proven)


def search_batch(
    system: SystemSpec,
    model: ModelSpec,
    workload: Workload,
    *,
    tpot_max_s: Optional[float],
    mode: CostMode,
    solve: Callable[[Workload], Optional[float]],
    cap: int = BATCH_SEARCH_CAP,
    max_solves: int = DEFAULT_MAX_SOLVES,
    max_bounds: int = DEFAULT_MAX_BOUNDS,
    rel_tol: float = 0.0,
    ttft_max_s: Optional[float] = None,
    terms_cache: Optional[dict] = None,
) -> BatchSearch:
    """The batch of highest throughput in 1 .. min(cap, largest that fits). ``solve(workload)`` returns the
    optimal latency at that batch under the bounds (mean TPOT <= ``tpot_max_s``, TTFT <= ``ttft_max_s``; None
    when infeasible); it is called only where the bound requires, at most
    ``max_solves`` times once some batch is feasible, and at most ``max_bounds`` ranges are bounded. It stops
    when no range's bound beats the best batch by more than ``rel_tol``; ``gap_bound`` says how far from
    proven the answer is (0.0: exact).

    With calibrated kernel tables (``system.kernels``: measured times by shape, no monotone structure the
    relaxation can rest on), or in the paper mode (the authors' model, not costterms' terms), the bound still
    orders the search but proves nothing: unless every batch of the range was solved, ``gap_bound`` is None.
    ``terms_cache``: streamed layers' terms the relaxed bounds share with ``solve`` (space.shared_layer_terms)."""
    proven = system.kernels is None and mode != CostMode.PAPER
    top = largest_feasible_batch(
        system, model, workload.input_len, workload.output_len, cap=cap, precision=workload.precision
    )
    if top is None:
        return BatchSearch(None, 0.0, (), 0, None, 0.0)
    out_len, steps, q = workload.output_len, workload.decode_steps, workload.input_len
    memory: dict[int, object] = {}
    exact: dict[int, float] = {}
    order: list[int] = []
    bounds = 0

    def at(b: int) -> Workload:
        return workload.model_copy(update={"batch": b})

    def upper_bound(lo: int, hi: int) -> float:
        nonlocal bounds
        bounds += 1
        # Linear layers: decode and the LM head see B rows (B in [lo, hi]); a prefill chunk sees b L_in rows
        # for some chunk of b in [1, hi] sequences.
        pre_sys = flat_matmul_system(system, q, hi * q)
        dec_sys = flat_matmul_system(system, lo, hi)
        cost = relaxed_batch(pre_sys, dec_sys, model, at(hi), mode, terms_cache)
        # the bounds' side at lo, read only under a bound (best_in_combo); its prefill only under a TTFT bound
        bounded = tpot_max_s is not None or ttft_max_s is not None
        cons = (
            relaxed_batch(pre_sys if ttft_max_s is not None else None, dec_sys, model, at(lo), mode, terms_cache)
            if lo != hi and bounded
            else cost
        )
        if lo not in memory:
            memory[lo] = least_footprint_memory(system, model, at(lo), relaxed=True)
        consts = StageConstants(
            model.num_layers,
            steps,
            system.has_cxl,
            cost.resident_decode_total_s,
            cost.head_s * (1 + steps),
            cons.resident_decode_total_s,
            cons.head_s,
            cons.head_s,
        )
        best_latency = np.inf
        for (kv, ef), pre in cost.prefill.items():
            arrays = ComboArrays(
                kv,
                memory[lo],
                cost.resident_prefill_s,
                pre,
                cost.decode[(kv, ef)],
                cons.decode[(kv, ef)],
                cost.prefill_fill.get((kv, ef)),
                None
                if ttft_max_s is None or cons is cost
                else PrefillSide(cons.resident_prefill_s, cons.prefill[(kv, ef)], cons.prefill_fill.get((kv, ef))),
            )
            found = best_in_combo(arrays, consts, tpot_max_s, ttft_max_s=ttft_max_s)
            if found is not None:
                best_latency = min(best_latency, found[0])
        return 0.0 if not np.isfinite(best_latency) else hi * out_len / best_latency

    def evaluate(b: int) -> None:
        if b not in exact:
            latency = solve(at(b))
            exact[b] = 0.0 if latency is None else b * out_len / latency
            order.append(b)

    def best() -> tuple[Optional[int], float]:
        feasible = [(v, -b) for b, v in exact.items() if v > 0]
        if not feasible:
            return None, 0.0
        v, nb = max(feasible)
        return -nb, v

    heap: list[tuple[float, int, int]] = []

    def push(lo: int, hi: int) -> None:
        while hi >= lo and hi in exact:
            hi -= 1
        while lo <= hi and lo in exact:
            lo += 1
        if lo <= hi:
            heapq.heappush(heap, (-upper_bound(lo, hi), lo, hi))

    # Seeds: the largest batch that fits, the largest that keeps every layer resident, and (with CXL) the
    # largest that fits without using CXL. Each ends a regime in which throughput changes abruptly (every
    # layer on the GPU; everything in DDR); bounding the regimes apart keeps the bound of one regime from
    # drawing on the memory of another (without the DDR edge, gnr-a100-cxl with Llama-3.1-70B, 256/32,
    # spent its 16 solves above the edge and returned 36.8 tokens/s where B = 3564 gives 177.7).
    evaluate(top)
    edges = {top}
    resident_top = largest_feasible_batch(
        system, model, workload.input_len, workload.output_len, cap=top, precision=workload.precision, all_resident=True
    )
    if resident_top is not None:
        edges.add(resident_top)
    if system.has_cxl:
        ddr_top = largest_feasible_batch(
            system.model_copy(update={"cxl": None}),
            model,
            workload.input_len,
            workload.output_len,
            cap=top,
            precision=workload.precision,
        )
        if ddr_top is not None:
            edges.add(ddr_top)
    # Below each edge, its LADDER_SEEDS largest multiples of the minibatch cap: the largest batches whose prefill
    # chunk can be the smallest (B / 64 sequences). Near an edge throughput jumps with B's divisors: a batch
    # with no divisor near the cap prefills in large chunks whose temporaries crowd out streaming buffers and
    # resident layers (gnr-a100, Llama-3.1-70B, 256/32: B = 3528 gives 71.7 tokens/s, B = 3456 = 64 x 54
    # gives 176.9). Seeds order the search; the gap bound still says what is proven.
    for edge in list(edges):
        for k in range(LADDER_SEEDS):
            if edge >= (k + 1) * MAX_PREFILL_MINIBATCHES:
                edges.add(MAX_PREFILL_MINIBATCHES * (edge // MAX_PREFILL_MINIBATCHES - k))
    lo = 1
    for edge in sorted(edges):
        evaluate(edge)
        push(lo, edge)
        lo = edge + 1
    while heap and ((len(order) < max_solves and bounds < max_bounds) or best()[0] is None):
        neg_ub, lo, hi = heap[0]
        if -neg_ub <= best()[1] * (1.0 + rel_tol):
            break  # no range left can beat the incumbent (by more than rel_tol)
        heapq.heappop(heap)
        if lo == hi:
            evaluate(lo)
            continue
        evaluate(hi)  # the top of a range is often its best batch: a good incumbent early
        mid = (lo + hi - 1) // 2
        push(lo, mid)
        push(mid + 1, hi - 1)
    b, value = best()
    left = max((-h[0] for h in heap), default=0.0)
    gap: Optional[float]
    if len(exact) == top:
        gap = 0.0  # every batch solved
    elif not proven:
        gap = None
    elif value > 0:
        gap = max(0.0, left / value - 1.0)
    else:
        gap = 0.0 if left == 0.0 else float("inf")
    return BatchSearch(b, value, tuple(order), bounds, top, gap)
