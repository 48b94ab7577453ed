"""Explaining why no plan fits: the binding tier, how much more of it, or how much smaller a query."""

from __future__ import annotations

from typing import Optional

import numpy as np

from lia_model.hardware import SystemSpec
from lia_model.memory import MemoryTier
from lia_model.models import ModelSpec
from lia_model.optimizer.enumerate import any_plan_fits_memory, least_footprint_memory
from lia_model.optimizer.space import tier_candidates
from lia_model.plan import HostTier
from lia_model.units import BYTES_PER_GB
from lia_model.workload import Workload


def tier_needs(system: SystemSpec, model: ModelSpec, workload: Workload) -> dict[MemoryTier, float]:
    """For each tier: the least extra capacity (bytes) that makes some plan fit, holding the other tiers
    as they are (inf when no amount of that tier alone helps). Uses each configuration's smallest
    footprint (all-CPU policies: no GPU buffers, no KV staging, the smallest workspace)."""
    n_layers = model.num_layers
    resident = np.arange(n_layers + 1, dtype=float)
    streamed = n_layers - resident
    best = {t: np.inf for t in MemoryTier}
    tiers = tier_candidates(system)
    mem = least_footprint_memory(system, model, workload)
    avail = mem.available_bytes
    hbm = mem.embedding_bytes + mem.gpu_workspace_bytes + resident * (mem.layer_weight_bytes + mem.kv_layer_bytes)
    for wt in tiers:
        for kv in tiers:
            ddr = mem.host_workspace_bytes + streamed * (mem.layer_weight_bytes * (wt == HostTier.DDR)
                                                         + mem.kv_layer_bytes * (kv == HostTier.DDR))
            cxl = streamed * (mem.layer_weight_bytes * (wt == HostTier.CXL) + mem.kv_layer_bytes * (kv == HostTier.CXL))
            need = {MemoryTier.HBM: hbm - avail[MemoryTier.HBM], MemoryTier.DDR: ddr - avail[MemoryTier.DDR],
                    MemoryTier.CXL: cxl - avail[MemoryTier.CXL]}
            for tier in MemoryTier:
                others_ok = np.all([need[o] <= 0 for o in MemoryTier if o != tier], axis=0)
                if others_ok.any():
                    best[tier] = min(best[tier], float(np.min(need[tier][others_ok])))
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
    smaller_batch = largest_feasible(1, workload.batch - 1, lambda b: any_plan_fits_memory(
        system, model, Workload(batch=b, input_len=workload.input_len, output_len=workload.output_len)))
    shorter_input = largest_feasible(1, workload.input_len - 1, lambda L: any_plan_fits_memory(
        system, model, Workload(batch=workload.batch, input_len=L, output_len=workload.output_len)))
    options = []
    if parts:
        options.append(" or ".join(parts))
    if smaller_batch is not None:
        options.append(f"a batch of at most {smaller_batch}")
    if shorter_input is not None:
        options.append(f"an input of at most {shorter_input} tokens")
    what = "; or ".join(options) if options else "no change of one tier or of the query alone is enough"
    return (f"no plan of {model.name} at B={workload.batch}, L_in={workload.input_len}, L_out={workload.output_len} "
            f"fits {system.name}'s memory; {binding.value.upper()} binds. Feasible with: {what}")
