"""Exact optimisation by enumeration of the plan space (the oracle the ILP is tested against).

For one batch it evaluates every (combo, prefill ISA, decode ISA, prefill policy, decode policy, N_res) of
the space with the cost forms of ``SpaceTables``:

  latency = N_res (R_pre(n) + sum_t R_dec(t)) + K (S_pre(p_pre, isa_pre) + sum_t S_dec(p_dec, isa_dec, t)) + head
  memory  = the formulas of lia_model.memory, where the policies enter only through c = p_pre AND p_dec
            (which sublayers need no GPU buffer) and whether any attention runs on the GPU
  mean TPOT = (N_res sum_t R_dec(t) + K sum_t S_dec(p_dec, isa_dec, t) + S head) / S

The ISA of a stage enters only that stage's streamed time (not memory), so for each policy vector the best
ISA is the one with the smallest time: S_pre(p) = min_isa S_pre(p, isa), likewise in decode (which also
minimises the TPOT, the same sum). ``exhaustive=True`` evaluates all 4096 policy pairs for every N_res
(brute force over the pairs, used by the tests); otherwise, without a TPOT bound, the best pair of each
memory class c is found first (64 classes), which gives the same optimum in a few milliseconds.
``brute_force_optimum`` enumerates the ISA pairs explicitly too (the tests' oracle).

``solve_vectors`` is the enumeration itself, over plain arrays; the batch search (``batch.py``) runs it
on relaxed arrays to bound the throughput of whole ranges of batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Optional

import numpy as np

from lia_model.costterms import ALL_POLICY_FEATURES, NUM_POLICIES
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, MemoryTier, memory_constants
from lia_model.models import ModelSpec
from lia_model.optimizer.space import (
    Combo, SpaceTables, minibatch_candidates, template_plan, tidy_plan, tier_candidates,
)
from lia_model.plan import CpuIsa, HostTier, Plan, policy_from_index
from lia_model.sublayers import NUM_SUBLAYERS
from lia_model.workload import Workload

_PP, _PD = np.divmod(np.arange(NUM_POLICIES * NUM_POLICIES), NUM_POLICIES)  # pair index -> (prefill, decode)
_PAIR_CLASS = _PP & _PD                                                       # sublayers on the CPU in both stages
_ATTN_BITS = 0b110  # attn_score and attn_context


@dataclass(frozen=True)
class EnumeratedOptimum:
    plan: Plan
    latency_s: float
    tpot_mean_s: Optional[float]
    combo_latency_s: Optional[dict] = None   # the best latency with each combo (inf: none fits), see solve_vectors


def _buffer_bytes_by_class(sublayer_weight_bytes: tuple[float, ...]) -> np.ndarray:
    """2 sum_i W_i over sublayers NOT on the CPU in both stages, for each class c (bit i = CPU in both)."""
    w = np.asarray(sublayer_weight_bytes)
    classes = np.arange(NUM_POLICIES)
    needs_buffer = ((classes[:, None] >> np.arange(NUM_SUBLAYERS)) & 1) == 0
    return 2.0 * needs_buffer @ w


def _attention_on_gpu_by_class() -> np.ndarray:
    classes = np.arange(NUM_POLICIES)
    return (classes & _ATTN_BITS) != _ATTN_BITS


_ATTN_GPU = _attention_on_gpu_by_class()


def _host_fits(mem: MemoryConstants, tiers: tuple[HostTier, HostTier], streamed: np.ndarray) -> np.ndarray:
    avail = mem.available_bytes
    wt, kv = tiers
    ddr = mem.host_workspace_bytes + streamed * (
        mem.layer_weight_bytes * (wt == HostTier.DDR) + mem.kv_layer_bytes * (kv == HostTier.DDR))
    cxl = streamed * (mem.layer_weight_bytes * (wt == HostTier.CXL) + mem.kv_layer_bytes * (kv == HostTier.CXL))
    return (ddr <= avail[MemoryTier.DDR]) & (cxl <= avail[MemoryTier.CXL])


def _hbm_base(mem: MemoryConstants, resident: np.ndarray) -> np.ndarray:
    return (mem.embedding_bytes + mem.gpu_workspace_bytes
            + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes))


def _class_extra_hbm(mem: MemoryConstants) -> np.ndarray:
    """HBM a streamed configuration adds, per class c: buffers + KV staging when attention is on the GPU."""
    return _buffer_bytes_by_class(mem.sublayer_weight_bytes) + _ATTN_GPU * mem.kv_layer_bytes


def _min_over_isas(values: dict[CpuIsa, np.ndarray], order: tuple[CpuIsa, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise minimum over ISAs [64] and which ISA reaches it (the first in ``order`` among equals)."""
    isas = [i for i in order if i in values]
    stack = np.stack([values[i] for i in isas])
    pick = np.argmin(stack, axis=0)
    return stack[pick, np.arange(stack.shape[1])], np.array([order.index(isas[k]) for k in pick])


@dataclass
class StageVectors:
    """One stage's streamed-layer time of every policy vector (decode: summed over the steps) and the ISA
    (an index into the tables' ISA order) reaching it."""

    time_s: np.ndarray
    isa: np.ndarray


@dataclass
class VectorProblem:
    """The latency problem of one batch as arrays (see the module docstring for the formulas).

    prefill:  per combo, the streamed prefill vectors, R_pre(n) and the memory constants of n
    decode:   per tier pair, the streamed decode vectors (summed over steps)
    The TPOT bound reads ``tpot_decode``, ``tpot_resident_decode_s`` and ``tpot_head_s``, which are the
    cost side's own values except in the batch search's relaxation."""

    num_layers: int
    decode_steps: int
    combos: tuple[Combo, ...]
    prefill: dict[Combo, StageVectors]
    resident_prefill_s: dict[Combo, float]
    memory: dict[Combo, MemoryConstants]
    decode: dict[tuple[HostTier, HostTier], StageVectors]
    resident_decode_total_s: float
    head_total_s: float
    tpot_decode: dict[tuple[HostTier, HostTier], np.ndarray] = field(default_factory=dict)
    tpot_resident_decode_total_s: Optional[float] = None
    tpot_head_s: float = 0.0


@dataclass(frozen=True)
class VectorOptimum:
    latency_s: float
    combo: Combo
    resident: int
    prefill_policy: int
    decode_policy: int
    prefill_isa: int
    decode_isa: int


def vector_problem(tables: SpaceTables) -> VectorProblem:
    steps = tables.decode_steps
    prefill = {}
    for c in tables.combos:
        times = {isa: st.layer_time(ALL_POLICY_FEATURES)[:, 0] for isa, st in tables.prefill[c].items()}
        prefill[c] = StageVectors(*_min_over_isas(times, tables.isas))
    decode = {}
    for tiers in tables.tier_pairs:
        if steps > 0:
            times = {isa: st.layer_time(ALL_POLICY_FEATURES).sum(axis=1) for isa, st in tables.decode[tiers].items()}
            decode[tiers] = StageVectors(*_min_over_isas(times, tables.isas))
        else:
            decode[tiers] = StageVectors(np.zeros(NUM_POLICIES), np.zeros(NUM_POLICIES, dtype=int))
    res_dec = float(tables.resident_decode_s.sum())
    return VectorProblem(
        num_layers=tables.num_layers, decode_steps=steps, combos=tables.combos, prefill=prefill,
        resident_prefill_s={c: tables.resident_prefill_s[c.minibatches] for c in tables.combos},
        memory={c: tables.memory[c.minibatches] for c in tables.combos}, decode=decode,
        resident_decode_total_s=res_dec, head_total_s=tables.head_total_s,
        tpot_decode={k: v.time_s for k, v in decode.items()}, tpot_resident_decode_total_s=res_dec,
        tpot_head_s=tables.head_s)


def solve_vectors(vp: VectorProblem, tpot_max_s: Optional[float] = None, exhaustive: bool = False,
                  per_combo: Optional[dict] = None) -> Optional[VectorOptimum]:
    """The minimum-latency point of a VectorProblem (None when nothing fits memory and the TPOT bound).
    ``per_combo``, when given, receives the best latency reached with each combo (inf where none fits)."""
    n_layers = vp.num_layers
    resident = np.arange(n_layers + 1, dtype=float)
    streamed = n_layers - resident
    steps = vp.decode_steps
    bounded = tpot_max_s is not None and steps > 0
    res_dec_tpot = vp.tpot_resident_decode_total_s if vp.tpot_resident_decode_total_s is not None \
        else vp.resident_decode_total_s
    best: Optional[VectorOptimum] = None
    rows = np.arange(n_layers)  # N_res = 0 .. N-1: at least one streamed layer
    for combo in vp.combos:
        mem = vp.memory[combo]
        hbm_avail = mem.available_bytes[MemoryTier.HBM]
        host_ok = _host_fits(mem, combo.tiers, streamed)
        hbm_base = _hbm_base(mem, resident)
        resident_time = resident * (vp.resident_prefill_s[combo] + vp.resident_decode_total_s)
        pre, dec = vp.prefill[combo], vp.decode[combo.tiers]
        extra = _class_extra_hbm(mem)

        # All layers resident (K = 0): no streaming, policies and ISAs do not matter.
        if host_ok[-1] and hbm_base[-1] <= hbm_avail:
            lat = float(resident_time[-1] + vp.head_total_s)
            tpot_ok = not bounded or (n_layers * res_dec_tpot + vp.tpot_head_s * steps) / steps <= tpot_max_s
            if tpot_ok and per_combo is not None:
                per_combo[combo] = min(per_combo.get(combo, np.inf), lat)
            if tpot_ok and (best is None or lat < best.latency_s):
                best = VectorOptimum(lat, combo, n_layers, 0, 0, 0, 0)

        ok_rows = rows[host_ok[:-1]]
        if ok_rows.size == 0:
            continue
        pair_time = pre.time_s[_PP] + dec.time_s[_PD]                      # [4096]
        if exhaustive:
            lat = resident_time[ok_rows, None] + streamed[ok_rows, None] * pair_time[None, :] + vp.head_total_s
            ok = hbm_base[ok_rows, None] + extra[_PAIR_CLASS][None, :] <= hbm_avail
            if bounded:
                dec_tpot = vp.tpot_decode[combo.tiers]
                mean = (resident[ok_rows, None] * res_dec_tpot + streamed[ok_rows, None] * dec_tpot[_PD][None, :]
                        + vp.tpot_head_s * steps) / steps
                ok &= mean <= tpot_max_s
            lat = np.where(ok, lat, np.inf)
            flat = int(np.argmin(lat))
            r, pair = divmod(flat, pair_time.size)
            value = float(lat.flat[flat])
        elif bounded:
            # Per N_res the bound allows the decode vectors with K D(p_dec) <= X S - N_res R_dec - S head, and
            # memory the classes with extra(c) <= HBM left: both are "the k smallest" of a sorted list, so rows
            # share few distinct (decode, class) allowances; the best pair is found once per allowance.
            dec_tpot = vp.tpot_decode[combo.tiers]
            k = streamed[ok_rows]
            room = tpot_max_s * steps - resident[ok_rows] * res_dec_tpot - vp.tpot_head_s * steps
            dec_order, cls_order = np.sort(dec_tpot), np.sort(extra)
            n_dec = np.searchsorted(dec_order, room / k, side="right")
            n_cls = np.searchsorted(cls_order, hbm_avail - hbm_base[ok_rows], side="right")
            row_best = np.full(ok_rows.size, np.inf)
            row_pair = np.zeros(ok_rows.size, dtype=int)
            for nd, nc in set(zip(n_dec.tolist(), n_cls.tolist())):
                if nd == 0 or nc == 0:
                    continue
                allowed = (dec_tpot[_PD] <= dec_order[nd - 1]) & (extra[_PAIR_CLASS] <= cls_order[nc - 1])
                masked = np.where(allowed, pair_time, np.inf)
                pair = int(np.argmin(masked))
                sel = (n_dec == nd) & (n_cls == nc)
                row_best[sel], row_pair[sel] = masked[pair], pair
            lat = resident_time[ok_rows] + k * row_best + vp.head_total_s
            r = int(np.argmin(lat))
            pair, value = int(row_pair[r]), float(lat[r])
        else:
            best_time = np.full(NUM_POLICIES, np.inf)
            np.minimum.at(best_time, _PAIR_CLASS, pair_time)
            # the first pair (lowest index) reaching each class minimum
            hit = np.flatnonzero(pair_time == best_time[_PAIR_CLASS])
            best_pair = np.full(NUM_POLICIES, -1)
            best_pair[_PAIR_CLASS[hit[::-1]]] = hit[::-1]
            lat = resident_time[ok_rows, None] + streamed[ok_rows, None] * best_time[None, :] + vp.head_total_s
            ok = hbm_base[ok_rows, None] + extra[None, :] <= hbm_avail
            lat = np.where(ok, lat, np.inf)
            flat = int(np.argmin(lat))
            r, cls = divmod(flat, NUM_POLICIES)
            pair, value = int(best_pair[cls]), float(lat.flat[flat])
        if per_combo is not None:
            per_combo[combo] = min(per_combo.get(combo, np.inf), value)
        if np.isfinite(value) and (best is None or value < best.latency_s):
            pp, pd = int(_PP[pair]), int(_PD[pair])
            best = VectorOptimum(value, combo, int(ok_rows[r]), pp, pd, int(pre.isa[pp]), int(dec.isa[pd]))
    return best


def plan_of(tables: SpaceTables, opt: VectorOptimum) -> Plan:
    plan = template_plan(tables.system).model_copy(update={
        "prefill_policy": policy_from_index(opt.prefill_policy),
        "decode_policy": policy_from_index(opt.decode_policy),
        "gpu_resident_layers": opt.resident,
        "prefill_minibatches": opt.combo.minibatches,
        "weight_tier": opt.combo.weight_tier,
        "kv_tier": opt.combo.kv_tier,
        "prefill_cpu_isa": tables.isas[opt.prefill_isa],
        "decode_cpu_isa": tables.isas[opt.decode_isa],
    })
    return tidy_plan(plan, opt.resident == tables.num_layers, tables.decode_steps, tables.isas[0])


def enumerate_optimum(tables: SpaceTables, tpot_max_s: Optional[float] = None,
                      exhaustive: bool = False) -> Optional[EnumeratedOptimum]:
    """The minimum-latency plan of the space (None when no plan fits memory and the TPOT bound)."""
    per_combo: dict = {}
    found = solve_vectors(vector_problem(tables), tpot_max_s, exhaustive, per_combo)
    if found is None:
        return None
    return EnumeratedOptimum(plan_of(tables, found), found.latency_s, None, per_combo)


def brute_force_optimum(tables: SpaceTables, tpot_max_s: Optional[float] = None) -> Optional[EnumeratedOptimum]:
    """The tests' oracle: every ISA pair is its own enumeration of every policy pair, N_res and combo
    (no per-policy ISA minimum, no class shortcut). Build the tables with ``prune_isas=False``."""
    best: Optional[EnumeratedOptimum] = None
    vp = vector_problem(tables)
    steps = tables.decode_steps
    for isa_pre, isa_dec in product(tables.isas, tables.isas):
        pre = {c: tables.prefill[c].get(isa_pre) for c in tables.combos}
        dec = {k: tables.decode[k].get(isa_dec) for k in tables.tier_pairs} if steps else {}
        if any(v is None for v in (*pre.values(), *dec.values())):
            continue  # an ISA the tables pruned
        i_pre, i_dec = tables.isas.index(isa_pre), tables.isas.index(isa_dec)
        vp.prefill = {c: StageVectors(st.layer_time(ALL_POLICY_FEATURES)[:, 0], np.full(NUM_POLICIES, i_pre))
                      for c, st in pre.items()}
        for k in tables.tier_pairs:
            times = dec[k].layer_time(ALL_POLICY_FEATURES).sum(axis=1) if steps else np.zeros(NUM_POLICIES)
            vp.decode[k] = StageVectors(times, np.full(NUM_POLICIES, i_dec))
            vp.tpot_decode[k] = times
        found = solve_vectors(vp, tpot_max_s, exhaustive=True)
        if found is not None and (best is None or found.latency_s < best.latency_s):
            best = EnumeratedOptimum(plan_of(tables, found), found.latency_s, None)
    return best


def least_footprint_memory(system: SystemSpec, model: ModelSpec, workload: Workload) -> MemoryConstants:
    """The memory constants of the minibatch count with the smallest workspace (n = B: one sequence per
    prefill chunk; taken as the minimum over every n, so nothing rests on that)."""
    consts = [memory_constants(system, model, workload, n) for n in minibatch_candidates(workload.batch)]
    return min(consts, key=lambda m: (m.gpu_workspace_bytes, m.host_workspace_bytes))


def any_plan_fits_memory(system: SystemSpec, model: ModelSpec, workload: Workload,
                         all_resident: bool = False) -> bool:
    """Whether some plan of the space fits every tier (with ``all_resident``: some plan keeping every layer
    on the GPU). The policies' smallest footprint is all-CPU in both stages (no streaming buffers, no KV
    staging), and the workspace is smallest at one n (``least_footprint_memory``), so only N_res and the
    tiers need trying."""
    n_layers = model.num_layers
    resident = np.arange(n_layers if all_resident else 0, n_layers + 1, dtype=float)
    streamed = n_layers - resident
    tiers = tier_candidates(system)
    mem = least_footprint_memory(system, model, workload)
    hbm_ok = _hbm_base(mem, resident) <= mem.available_bytes[MemoryTier.HBM]
    return any((_host_fits(mem, (wt, kv), streamed) & hbm_ok).any() for wt in tiers for kv in tiers)
