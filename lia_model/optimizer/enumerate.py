"""Exact optimisation by enumeration of the plan space (the oracle the ILP is tested against).

For one batch it evaluates every (combo, prefill policy, decode policy, N_res) of the space with the cost
forms of ``SpaceTables``:

  latency = N_res (R_pre(n) + sum_t R_dec(t)) + K (S_pre(p_pre) + sum_t S_dec(p_dec, t)) + head
  memory  = the formulas of lia_model.memory, where the policies enter only through c = p_pre AND p_dec
            (which sublayers need no GPU buffer) and whether any attention runs on the GPU

``exhaustive=True`` evaluates all 4096 policy pairs for every N_res (brute force, used by the tests);
otherwise, without a TPOT bound, the best pair of each memory class c is found first (64 classes), which
gives the same optimum in a few milliseconds.
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
from lia_model.workload import Workload
from lia_model.plan import HostTier, Plan, policy_from_index
from lia_model.sublayers import NUM_SUBLAYERS

_PP, _PD = np.divmod(np.arange(NUM_POLICIES * NUM_POLICIES), NUM_POLICIES)  # pair index -> (prefill, decode)
_ATTN_BITS = 0b110  # attn_score and attn_context


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


def _host_fits(mem: MemoryConstants, combo: Combo, streamed: np.ndarray) -> np.ndarray:
    avail = mem.available_bytes
    ddr = mem.host_workspace_bytes + streamed * (
        mem.layer_weight_bytes * (combo.weight_tier == HostTier.DDR) + mem.kv_layer_bytes * (combo.kv_tier == HostTier.DDR))
    cxl = streamed * (mem.layer_weight_bytes * (combo.weight_tier == HostTier.CXL)
                      + mem.kv_layer_bytes * (combo.kv_tier == HostTier.CXL))
    return (ddr <= avail[MemoryTier.DDR]) & (cxl <= avail[MemoryTier.CXL])


def _hbm_base(mem: MemoryConstants, resident: np.ndarray) -> np.ndarray:
    return (mem.embedding_bytes + mem.gpu_workspace_bytes
            + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes))


def _class_extra_hbm(tables: SpaceTables, combo: Combo) -> np.ndarray:
    """HBM a streamed configuration adds, per class c: buffers + KV staging when attention is on the GPU."""
    mem = tables.memory[combo.minibatches]
    return _buffer_bytes_by_class(mem.sublayer_weight_bytes) + _ATTN_GPU * mem.kv_layer_bytes


def stage_sums(tables: SpaceTables, combo: Combo) -> tuple[np.ndarray, np.ndarray]:
    """Streamed-layer time of every policy vector: prefill [64] and decode summed over steps [64]."""
    prefill = tables.prefill[combo].layer_time(ALL_POLICY_FEATURES)[:, 0]
    if tables.decode_steps > 0:
        decode = tables.decode[(combo.weight_tier, combo.kv_tier)].layer_time(ALL_POLICY_FEATURES).sum(axis=1)
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
    best: Optional[tuple[float, Combo, int, int, int]] = None  # (latency, combo, n_res, pp, pd)
    hbm_avail = None
    for combo in tables.combos:
        hbm_avail = tables.memory[combo.minibatches].available_bytes[MemoryTier.HBM]
        mem = tables.memory[combo.minibatches]
        host_ok = _host_fits(mem, combo, streamed)
        hbm_base = _hbm_base(mem, resident)
        resident_time = resident * (tables.resident_prefill_s[combo.minibatches] + resident_decode_total)
        prefill, decode = stage_sums(tables, combo)
        extra = _class_extra_hbm(tables, combo)

        # All layers resident (K = 0): no streaming, policies do not matter.
        if host_ok[-1] and hbm_base[-1] <= hbm_avail:
            lat = float(resident_time[-1] + tables.head_total_s)
            tpot = (n_layers * resident_decode_total + tables.head_s * steps) / steps if steps else None
            if (tpot_max_s is None or tpot is None or tpot <= tpot_max_s) and (best is None or lat < best[0]):
                best = (lat, combo, n_layers, 0, 0)

        rows = np.arange(n_layers)  # N_res = 0 .. N-1: at least one streamed layer
        pair_time = prefill[_PP] + decode[_PD]                             # [4096]
        pair_class = _PP & _PD                                             # sublayers on the CPU in both stages
        if exhaustive or tpot_max_s is not None:
            lat = resident_time[rows, None] + streamed[rows, None] * pair_time[None, :] + tables.head_total_s
            ok = host_ok[rows, None] & (hbm_base[rows, None] + extra[pair_class][None, :] <= hbm_avail)
            if tpot_max_s is not None and steps:
                dec = (resident[rows, None] * resident_decode_total + streamed[rows, None] * decode[_PD][None, :]
                       + tables.head_s * steps) / steps
                ok &= dec <= tpot_max_s
            lat = np.where(ok, lat, np.inf)
            flat = int(np.argmin(lat))
            r, pair = divmod(flat, pair_time.size)
            value = float(lat[r, pair])
            if np.isfinite(value) and (best is None or value < best[0]):
                best = (value, combo, int(rows[r]), int(_PP[pair]), int(_PD[pair]))
        else:
            best_time = np.full(NUM_POLICIES, np.inf)
            np.minimum.at(best_time, pair_class, pair_time)
            best_pair = np.full(NUM_POLICIES, -1)
            # the first pair (lowest index) reaching each class minimum
            hit = pair_time == best_time[pair_class]
            order = np.flatnonzero(hit)
            for idx in order[::-1]:
                best_pair[pair_class[idx]] = idx
            lat = resident_time[rows, None] + streamed[rows, None] * best_time[None, :] + tables.head_total_s
            ok = host_ok[rows, None] & (hbm_base[rows, None] + extra[None, :] <= hbm_avail)
            lat = np.where(ok, lat, np.inf)
            flat = int(np.argmin(lat))
            r, cls = divmod(flat, NUM_POLICIES)
            value = float(lat[r, cls])
            if np.isfinite(value) and (best is None or value < best[0]):
                pair = int(best_pair[cls])
                best = (value, combo, int(rows[r]), int(_PP[pair]), int(_PD[pair]))
    if best is None:
        return None
    value, combo, n_res, pp, pd = best
    prefill, decode = tidy_policies(policy_from_index(pp), policy_from_index(pd), n_res == n_layers,
                                    tables.decode_steps)
    plan = template_plan(tables.system).model_copy(update={
        "prefill_policy": prefill,
        "decode_policy": decode,
        "gpu_resident_layers": n_res,
        "prefill_minibatches": combo.minibatches,
        "weight_tier": combo.weight_tier,
        "kv_tier": combo.kv_tier,
    })
    return EnumeratedOptimum(plan, value, None)


def any_plan_fits_memory(system: SystemSpec, model: ModelSpec, workload: Workload,
                         all_resident: bool = False) -> bool:
    """Whether some plan of the space fits every tier (with ``all_resident``: some plan keeping every layer
    on the GPU). The policies' smallest footprint is all-CPU in both stages (no streaming buffers, no KV
    staging), so only N_res, n and the tiers need trying."""
    n_layers = model.num_layers
    resident = np.arange(n_layers if all_resident else 0, n_layers + 1, dtype=float)
    streamed = n_layers - resident
    tiers = tier_candidates(system)
    for n in minibatch_candidates(workload.batch):
        mem = memory_constants(system, model, workload, n)
        hbm_ok = _hbm_base(mem, resident) <= mem.available_bytes[MemoryTier.HBM]
        for wt in tiers:
            for kv in tiers:
                if (_host_fits(mem, Combo(n, wt, kv), streamed) & hbm_ok).any():
                    return True
    return False
