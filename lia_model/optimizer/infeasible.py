"""Explaining why no plan fits: the binding tier, how much more of it, or how much smaller a query."""

from __future__ import annotations

from typing import Optional

import numpy as np

from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryTier
from lia_model.models import ModelSpec
from lia_model.optimizer.enumerate import any_plan_fits_memory, cxl_weight_range, least_footprint_memory
from lia_model.optimizer.space import tier_candidates
from lia_model.plan import HostTier
from lia_model.units import BYTES_PER_GB
from lia_model.workload import Workload


def tier_needs(system: SystemSpec, model: ModelSpec, workload: Workload) -> dict[MemoryTier, float]:
    """For each tier: the least extra capacity (bytes) that makes some plan fit, holding the other tiers
    as they are (inf when no amount of that tier alone helps). Uses each configuration's smallest
    footprint (all-CPU policies: no GPU buffers, no KV staging, the smallest workspace) and its best weight
    split: for more DDR as many layers' weights in CXL as CXL holds, for more CXL as few as DDR allows."""
    n_layers = model.num_layers
    resident = np.arange(n_layers + 1, dtype=float)
    streamed = n_layers - resident
    best = {t: np.inf for t in MemoryTier}
    for mem in (least_footprint_memory(system, model, workload),):
        avail, w = mem.available_bytes, mem.layer_weight_bytes
        hbm = mem.embedding_bytes + mem.gpu_workspace_bytes + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes)
        hbm_ok = hbm <= avail[MemoryTier.HBM]
        for kv in tier_candidates(system):
            kv_ddr = mem.kv_layer_bytes * (kv == HostTier.DDR)
            kv_cxl = mem.kv_layer_bytes * (kv == HostTier.CXL)
            lo, hi = cxl_weight_range(mem, kv, streamed, system.has_cxl)
            host_ok = lo <= hi
            if host_ok.any():
                best[MemoryTier.HBM] = min(best[MemoryTier.HBM], float(np.min((hbm - avail[MemoryTier.HBM])[host_ok])))
            # more DDR: the most weights CXL can take (none without CXL)
            k_cxl = (
                np.clip(np.floor((avail[MemoryTier.CXL] - streamed * kv_cxl) / w), 0, streamed)
                if system.has_cxl
                else np.zeros_like(streamed)
            )
            cxl_fits = streamed * kv_cxl <= avail[MemoryTier.CXL]
            ddr_need = mem.host_workspace_bytes + (streamed - k_cxl) * w + streamed * kv_ddr - avail[MemoryTier.DDR]
            ok = hbm_ok & cxl_fits
            if ok.any():
                best[MemoryTier.DDR] = min(best[MemoryTier.DDR], float(np.min(ddr_need[ok])))
            # more CXL: the fewest weights in CXL that DDR allows (a CXL tier added where there is none)
            ddr_room = avail[MemoryTier.DDR] - mem.host_workspace_bytes - streamed * kv_ddr
            k_min = np.maximum(0.0, np.ceil(streamed - ddr_room / w))
            ok = hbm_ok & (k_min <= streamed) & (ddr_room >= 0)
            cxl_need = k_min * w + streamed * kv_cxl - avail[MemoryTier.CXL]
            if ok.any():
                best[MemoryTier.CXL] = min(best[MemoryTier.CXL], float(np.min(cxl_need[ok])))
    return best


def largest_feasible(lo: int, hi: int, fits) -> Optional[int]:
    """Largest x in [lo, hi] with fits(x) True, assuming fits is monotone (True then False)."""
    if hi < lo or not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def explain_memory_infeasibility(system: SystemSpec, model: ModelSpec, workload: Workload) -> str:
    needs = tier_needs(system, model, workload)
    parts = []
    for tier, extra in sorted(needs.items(), key=lambda kv: kv[1]):
        if np.isfinite(extra):
            name = tier.value.upper()
            hint = " (a CXL tier, e.g. a -cxl system)" if tier == MemoryTier.CXL and not system.has_cxl else ""
            parts.append(f"{extra / BYTES_PER_GB:.1f} GB more {name}{hint}")
    binding = min(needs, key=needs.get)
    smaller_batch = largest_feasible(
        1, workload.batch - 1, lambda b: any_plan_fits_memory(system, model, workload.model_copy(update={"batch": b}))
    )
    shorter_input = largest_feasible(
        1,
        workload.input_len - 1,
        lambda L: any_plan_fits_memory(system, model, workload.model_copy(update={"input_len": L})),
    )
    options = []
    if parts:
        options.append(" or ".join(parts))
    if smaller_batch is not None:
        options.append(f"a batch of at most {smaller_batch}")
    if shorter_input is not None:
        options.append(f"an input of at most {shorter_input} tokens")
    what = "; or ".join(options) if options else "no change of one tier or of the query alone is enough"
    return (
        f"no plan of {model.name} at B={workload.batch}, L_in={workload.input_len}, L_out={workload.output_len} "
        f"fits {system.name}'s memory; {binding.value.upper()} binds. Feasible with: {what}"
    )
