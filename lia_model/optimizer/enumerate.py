"""Exact optimisation by enumeration of the plan space (the oracle the ILP is tested against).

For one batch it evaluates every (combo, prefill policy, decode policy, N_res) of the space, and the best
weight split K_cxl, with the cost terms of ``SpaceTables``:

  latency = N_res (R_pre(n) + sum_t R_dec(t)) + (K - K_cxl) Q_ddr(p_pre, p_dec) + K_cxl Q_cxl(p_pre, p_dec) + head
            with Q_tier = S_pre,tier(p_pre) + sum_t S_dec,tier(p_dec, t), K = N - N_res
  memory  = the formulas of lia_model.memory, where the policies enter only through c = p_pre AND p_dec
            (which sublayers need no GPU buffer) and whether any attention runs on the GPU; the host tiers
            only through K_cxl:  DDR: ws + (K - K_cxl) W + K KV [KV in DDR] <= A_ddr,
                                 CXL: K_cxl W + K KV [KV in CXL] <= A_cxl
            so each N_res allows an interval lo <= K_cxl <= hi (0 <= K_cxl <= K; only 0 without CXL)

At fixed other knobs the latency and the mean TPOT are affine in K_cxl and the memory constraints bound it
to an interval, so the best K_cxl is an end of the interval that the TPOT bound leaves (the minimum of an
affine function over an integer interval sits at an end): evaluating both ends is exhaustive in K_cxl.

``exhaustive=True`` evaluates all 4096 policy pairs for every N_res (brute force, used by the tests);
otherwise, without a TPOT bound and without CXL, the best pair of each memory class c is found first
(64 classes), which gives the same optimum in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from lia_model.costterms import ALL_POLICY_FEATURES, NUM_POLICIES
from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryConstants, MemoryTier, memory_constants
from lia_model.models import ModelSpec
from lia_model.optimizer.space import (
    Combo, SpaceTables, minibatch_candidates, template_plan, tier_candidates, tidy_policies,
)
from lia_model.plan import HostTier, Plan, policy_from_index
from lia_model.sublayers import NUM_SUBLAYERS
from lia_model.workload import Workload

_PP, _PD = np.divmod(np.arange(NUM_POLICIES * NUM_POLICIES), NUM_POLICIES)  # pair index -> (prefill, decode)
_PAIR_CLASS = _PP & _PD                                                      # sublayers on the CPU in both stages
_ATTN_BITS = 0b110  # attn_score and attn_context
_EPS_LAYERS = 1e-9  # slack (in layers) when rounding the memory bounds on K_cxl


@dataclass(frozen=True)
class EnumeratedOptimum:
    plan: Plan
    latency_s: float
    tpot_mean_s: Optional[float]


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


def cxl_weight_range(mem: MemoryConstants, kv_tier: HostTier, streamed: np.ndarray,
                     has_cxl: bool) -> tuple[np.ndarray, np.ndarray]:
    """The K_cxl the host tiers allow for each streamed count K: lo <= K_cxl <= hi (lo > hi: none).

    DDR: ws + (K - K_cxl) W + K KV [KV in DDR] <= A_ddr  ->  K_cxl >= K - (A_ddr - ws - K KV [DDR]) / W
    CXL: K_cxl W + K KV [KV in CXL] <= A_cxl             ->  K_cxl <= (A_cxl - K KV [CXL]) / W"""
    avail, w = mem.available_bytes, mem.layer_weight_bytes
    kv_ddr = mem.kv_layer_bytes * (kv_tier == HostTier.DDR)
    kv_cxl = mem.kv_layer_bytes * (kv_tier == HostTier.CXL)
    ddr_room = avail[MemoryTier.DDR] - mem.host_workspace_bytes - streamed * kv_ddr
    lo = np.maximum(0.0, np.ceil(streamed - ddr_room / w - _EPS_LAYERS))
    # With no streamed layer only the workspace must fit DDR.
    lo = np.where(streamed > 0, lo, np.where(mem.host_workspace_bytes <= avail[MemoryTier.DDR], 0.0, np.inf))
    if has_cxl:
        hi = np.minimum(streamed, np.floor((avail[MemoryTier.CXL] - streamed * kv_cxl) / w + _EPS_LAYERS))
    else:
        hi = np.where(streamed * kv_cxl > 0, -1.0, 0.0)
    return lo, hi


def _hbm_base(mem: MemoryConstants, resident: np.ndarray) -> np.ndarray:
    return (mem.embedding_bytes + mem.gpu_workspace_bytes
            + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes))


def _class_extra_hbm(tables: SpaceTables, combo: Combo) -> np.ndarray:
    """HBM a streamed configuration adds, per class c: buffers + KV staging when attention is on the GPU."""
    mem = tables.memory[combo.minibatches]
    return _buffer_bytes_by_class(mem.sublayer_weight_bytes) + _ATTN_GPU * mem.kv_layer_bytes


def stage_sums(tables: SpaceTables, combo: Combo, weight_tier: HostTier) -> tuple[np.ndarray, np.ndarray]:
    """Streamed-layer time of every policy vector: prefill [64] and decode summed over steps [64]."""
    prefill = tables.prefill[(combo, weight_tier)].layer_time(ALL_POLICY_FEATURES)[:, 0]
    if tables.decode_steps > 0:
        decode = tables.decode[combo.decode_key(weight_tier)].layer_time(ALL_POLICY_FEATURES).sum(axis=1)
    else:
        decode = np.zeros(NUM_POLICIES)
    return prefill, decode


def enumerate_optimum(tables: SpaceTables, tpot_max_s: Optional[float] = None,
                      exhaustive: bool = False) -> Optional[EnumeratedOptimum]:
    """The minimum-latency plan of the space (None when no plan fits memory and the TPOT bound)."""
    n_layers = tables.num_layers
    resident = np.arange(n_layers + 1, dtype=float)
    streamed = n_layers - resident
    steps = tables.decode_steps
    resident_decode_total = float(tables.resident_decode_s.sum())
    has_cxl = HostTier.CXL in tables.weight_tiers
    best: Optional[tuple[float, Combo, int, int, int, int]] = None  # (latency, combo, n_res, pp, pd, k_cxl)
    for combo in tables.combos:
        mem = tables.memory[combo.minibatches]
        hbm_avail = mem.available_bytes[MemoryTier.HBM]
        lo, hi = cxl_weight_range(mem, combo.kv_tier, streamed, has_cxl)
        hbm_base = _hbm_base(mem, resident)
        resident_time = resident * (tables.resident_prefill_s[combo.minibatches] + resident_decode_total)
        pre_d, dec_d = stage_sums(tables, combo, HostTier.DDR)
        extra = _class_extra_hbm(tables, combo)

        # All layers resident (K = 0): no streaming, policies do not matter.
        if lo[-1] <= hi[-1] and hbm_base[-1] <= hbm_avail:
            lat = float(resident_time[-1] + tables.head_total_s)
            tpot = (n_layers * resident_decode_total + tables.head_s * steps) / steps if steps else None
            if (tpot_max_s is None or tpot is None or tpot <= tpot_max_s) and (best is None or lat < best[0]):
                best = (lat, combo, n_layers, 0, 0, 0)

        rows = np.arange(n_layers)  # N_res = 0 .. N-1: at least one streamed layer
        k = streamed[rows, None]
        if not has_cxl and not exhaustive and tpot_max_s is None:
            pair_time = pre_d[_PP] + dec_d[_PD]
            best_time = np.full(NUM_POLICIES, np.inf)
            np.minimum.at(best_time, _PAIR_CLASS, pair_time)
            # the first pair (lowest index) reaching each class minimum
            best_pair = np.full(NUM_POLICIES, -1)
            for idx in np.flatnonzero(pair_time == best_time[_PAIR_CLASS])[::-1]:
                best_pair[_PAIR_CLASS[idx]] = idx
            lat = resident_time[rows, None] + k * best_time[None, :] + tables.head_total_s
            ok = (lo[rows, None] <= hi[rows, None]) & (hbm_base[rows, None] + extra[None, :] <= hbm_avail)
            lat = np.where(ok, lat, np.inf)
            r, cls = divmod(int(np.argmin(lat)), NUM_POLICIES)
            value = float(lat[r, cls])
            if np.isfinite(value) and (best is None or value < best[0]):
                pair = int(best_pair[cls])
                best = (value, combo, int(rows[r]), int(_PP[pair]), int(_PD[pair]), 0)
            continue

        if has_cxl:
            pre_c, dec_c = stage_sums(tables, combo, HostTier.CXL)
        else:
            pre_c, dec_c = pre_d, dec_d
        q_ddr = (pre_d[_PP] + dec_d[_PD])[None, :]                             # [1, 4096]
        dq = (pre_c[_PP] + dec_c[_PD])[None, :] - q_ddr                        # latency slope in K_cxl
        k_lo = np.broadcast_to(lo[rows, None], (rows.size, _PP.size)).copy()
        k_hi = np.broadcast_to(hi[rows, None], (rows.size, _PP.size)).copy()
        if tpot_max_s is not None and steps:
            # (N_res R_dec + K D_ddr + K_cxl (D_cxl - D_ddr) + head S) / S <= X
            dd = (dec_c - dec_d)[_PD][None, :]
            room = tpot_max_s * steps - resident[rows, None] * resident_decode_total - k * dec_d[_PD][None, :] \
                - tables.head_s * steps
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = room / dd
            k_hi = np.where(dd > 0, np.minimum(k_hi, np.floor(bound + _EPS_LAYERS)), k_hi)
            k_lo = np.where(dd < 0, np.maximum(k_lo, np.ceil(bound - _EPS_LAYERS)), k_lo)
            k_hi = np.where((dd == 0) & (room < 0), -1.0, k_hi)
        k_cxl = np.where(dq >= 0, k_lo, k_hi)
        lat = resident_time[rows, None] + k * q_ddr + k_cxl * dq + tables.head_total_s
        ok = (k_lo <= k_hi) & (hbm_base[rows, None] + extra[_PAIR_CLASS][None, :] <= hbm_avail)
        lat = np.where(ok, lat, np.inf)
        r, pair = divmod(int(np.argmin(lat)), _PP.size)
        value = float(lat[r, pair])
        if np.isfinite(value) and (best is None or value < best[0]):
            best = (value, combo, int(rows[r]), int(_PP[pair]), int(_PD[pair]), int(k_cxl[r, pair]))
    if best is None:
        return None
    value, combo, n_res, pp, pd, k_cxl = best
    return EnumeratedOptimum(plan_of(tables, combo, n_res, pp, pd, k_cxl), value, None)


def plan_of(tables: SpaceTables, combo: Combo, n_res: int, pp: int, pd: int, k_cxl: int) -> Plan:
    """The Plan of one point of the space (the weight split in its canonical form: all in CXL is
    weight_tier cxl, a part is cxl_weight_layers)."""
    streamed = tables.num_layers - n_res
    prefill, decode = tidy_policies(policy_from_index(pp), policy_from_index(pd), streamed == 0, tables.decode_steps)
    all_cxl = streamed > 0 and k_cxl == streamed
    return template_plan(tables.system).model_copy(update={
        "prefill_policy": prefill,
        "decode_policy": decode,
        "gpu_resident_layers": n_res,
        "prefill_minibatches": combo.minibatches,
        "weight_tier": HostTier.CXL if all_cxl else HostTier.DDR,
        "cxl_weight_layers": 0 if all_cxl else k_cxl,
        "kv_tier": combo.kv_tier,
        "expert_fetch": combo.expert_fetch,
    })


def any_plan_fits_memory(system: SystemSpec, model: ModelSpec, workload: Workload,
                         all_resident: bool = False) -> bool:
    """Whether some plan of the space fits every tier (with ``all_resident``: some plan keeping every layer
    on the GPU). The policies' smallest footprint is all-CPU in both stages (no streaming buffers, no KV
    staging), so only N_res, n, the KV tier and the weight split need trying."""
    n_layers = model.num_layers
    resident = np.arange(n_layers if all_resident else 0, n_layers + 1, dtype=float)
    streamed = n_layers - resident
    for n in minibatch_candidates(workload.batch):
        mem = memory_constants(system, model, workload, n)
        hbm_ok = _hbm_base(mem, resident) <= mem.available_bytes[MemoryTier.HBM]
        for kv in tier_candidates(system):
            lo, hi = cxl_weight_range(mem, kv, streamed, system.has_cxl)
            if ((lo <= hi) & hbm_ok).any():
                return True
    return False
