"""Assemble the calibrated system profile (a plain dict that ``lia_model.profiles.load_system`` validates).

The profile is self-contained: cpu, gpu, link, ddr and (when present) cxl are inline mappings, and every
number's ``source`` says "calibrated on HOST on DATE: <what was measured>" or, for a number that could not
be measured here, which datasheet profile it came from and why it was not measured. Nothing in it refers
to another file by path, so it can be copied anywhere (e.g. into hwprofiles/systems/).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from calibrate.fit import (
    Measured,
    attention_bytes,
    error_summary,
    fit_errors,
    fit_table,
    linear_bytes,
    peak_rate,
    rounded,
)
from calibrate.host import HostInfo, slug
from lia_model.errors import LiaInputError
from lia_model.units import BYTES_PER_GIB, BYTES_PER_S_PER_GBPS, FLOPS_PER_TFLOPS, S_PER_US

LINK_BANDWIDTH_MIN_BYTES = 64 << 20  # copies this size and larger set the link bandwidths


@dataclass
class Context:
    """Everything besides the rows that the profile needs."""

    host: HostInfo
    name: str
    date: str
    command: str
    threads: int
    isa_results: dict[str, dict[str, Any]]  # worker results by ISA (rows removed)
    gpu_info: Optional[dict[str, Any]]  # None when the GPU was not measured
    gpu_skip_reason: str  # why not, when not
    gpu_datasheet: dict[str, Any]  # composed datasheet GPU (with its name)
    link_datasheet: dict[str, Any]
    gpu_datasheet_where: str  # "hwprofiles/gpu/h100-sxm-80gb.yaml"
    link_datasheet_where: str
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    link_description: str = ""

    @property
    def stamp(self) -> str:
        return f"calibrated on {self.host.hostname} on {self.date}"


def _rows(rows: list[dict], **match: Any) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items()) and _num(r.get("time_s"))]


def overhead_seconds(rows: list[dict[str, Any]]) -> Optional[float]:
    """A per-op overhead is a floor, so over repeats the smallest repeat's median is taken: one disturbed
    repeat once measured 6.0 ms against 9.2 us in the other (the mean, 3 ms, then distorted every fit)."""
    if not rows:
        return None
    r = rows[0]
    repeats = [float(t) for t in str(r.get("time_s_repeats") or "").split(";") if t.strip()]
    return min(repeats) if repeats else float(r["time_s"])


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x) and x > 0


def _kernel_summary(rows: list[dict]) -> str:
    counts = Counter(str(r.get("kernel_observed") or "?") for r in rows)
    total = sum(counts.values())
    return ", ".join(f"{k} ({n} of {total} points)" for k, n in counts.most_common())


# ---------------------------------------------------------------- CPU


def memory_read_gbps(rows: list[dict], isas: list[str]) -> tuple[float, str]:
    """GEMV-like streaming read bandwidth of all cores: the median GEMV (1 token) bandwidth of each present
    ISA's stock-backend rows, the best ISA's figure."""
    best, where = 0.0, ""
    for isa in isas:
        gemv = [r for r in _rows(rows, family="cpu_matmul", isa=isa, tokens=1) if "ipex" not in str(r["backend"])]
        if not gemv:
            continue
        value = statistics.median(r["bytes"] / r["time_s"] / BYTES_PER_S_PER_GBPS for r in gemv)
        if value > best:
            best, where = value, f"median over {len(gemv)} GEMV shapes (1 token, catalog weights) with {isa}"
    return best, where


def measured_points(lin: list[dict], att: list[dict]) -> tuple[list[Measured], list[Measured]]:
    """Linear and attention rows as the fit's points, bytes counted as the cost model counts them."""
    lin_pts = [
        Measured(
            int(r["tokens"]),
            float(r["flops"]),
            linear_bytes(int(r["tokens"]), int(r["k"]), int(r["n"])),
            float(r["time_s"]),
        )
        for r in lin
    ]
    att_pts = [
        Measured(
            int(r["q"]),
            float(r["flops"]),
            attention_bytes(
                int(r["batch"]),
                int(r["heads"]),
                int(r["q"]),
                int(r["s"]),
                int(r["head_dim"]),
                softmax=r["op"] == "context",
            ),
            float(r["time_s"]),
        )
        for r in att
    ]
    return lin_pts, att_pts


def _isa_points(rows: list[dict], isa: str) -> tuple[list[Measured], list[Measured], list[dict], list[dict]]:
    lin = [r for r in _rows(rows, family="cpu_matmul", isa=isa) if "ipex" not in str(r["backend"])]
    att = _rows(rows, family="cpu_attention", isa=isa)
    lin_pts, att_pts = measured_points(lin, att)
    return lin_pts, att_pts, lin, att


def _annotate(rows: list[dict], points: list[Measured], errors: list[float]) -> None:
    for r, p, err in zip(rows, points, errors):
        r["pred_time_s"] = p.time_s * (1.0 + err)
        r["fit_error_rel"] = err


def cpu_spec(ctx: Context, rows: list[dict]) -> dict[str, Any]:
    host, stamp = ctx.host, ctx.stamp
    present = [
        isa
        for isa, res in ctx.isa_results.items()
        if res.get("present")
        and _rows(rows, family="cpu_matmul", isa=isa)
        and _rows(rows, family="cpu_attention", isa=isa)
    ]
    if not present:
        reasons = "; ".join(f"{isa}: {res.get('absent_reason', 'no rows')}" for isa, res in ctx.isa_results.items())
        raise LiaInputError(
            "cpu.isa",
            f"no CPU ISA could be measured on {host.hostname} ({reasons})",
            "run on an x86 CPU whose bf16 matmul runs through oneDNN with AVX-512 or AMX",
        )
    source: dict[str, str] = {}
    # the fit uses the figures exactly as the profile states them (rounded), so that the cost model
    # reproduces the fitted predictions from the file
    mem_gbps, mem_where = memory_read_gbps(rows, present)
    mem_gbps = rounded(mem_gbps, 4)
    ddr_gbps = rounded(_local_read_gbps(ctx, rows), 4)
    bandwidth = min(mem_gbps, ddr_gbps) * BYTES_PER_S_PER_GBPS
    overhead = _rows(rows, family="cpu_overhead")
    overhead_us = rounded(overhead_seconds(overhead) / S_PER_US, 4) if overhead else 0.0
    overhead_s = overhead_us * S_PER_US
    source["cores"] = (
        f"{stamp}: threads used by the matmul benchmarks (one per physical core of the "
        f"process's {len(host.affinity)} logical CPUs); {host.cpu_model}"
    )
    source["memory_read_gbps"] = f"{stamp}: {mem_where}; weights larger than the caches or cycled through copies"
    source["op_overhead_us"] = (
        f"{stamp}: median time of a 1x64 @ 64x64 bf16 linear (dispatch, no real work), smallest over the repeats"
        if overhead
        else f"{stamp}: not measured, set to 0"
    )
    isa_specs: dict[str, Any] = {}
    for isa, res in ctx.isa_results.items():
        if isa not in present:
            reason = res.get("absent_reason") or "measured no rows"
            isa_specs[isa] = {
                "present": False,
                "per_core_tflops": 0.0,
                "backend": res.get("backend", "onednn"),
                "kernel_observed": res.get("probe_kernel") or None,
                "absent_reason": reason,
            }
            continue
        lin_pts, att_pts, lin_rows, att_rows = _isa_points(rows, isa)
        peak_raw = peak_rate(lin_pts + att_pts)
        per_core = rounded(peak_raw / ctx.threads / FLOPS_PER_TFLOPS)
        peak = per_core * ctx.threads * FLOPS_PER_TFLOPS
        best = max(lin_rows + att_rows, key=lambda r: r["flops"] / r["time_s"])
        mm = fit_table(lin_pts, peak, bandwidth, overhead_s)
        at = fit_table(att_pts, peak, bandwidth, overhead_s)
        mm_err = fit_errors(lin_pts, mm, peak, bandwidth, overhead_s)
        at_err = fit_errors(att_pts, at, peak, bandwidth, overhead_s)
        _annotate(lin_rows, lin_pts, mm_err)
        _annotate(att_rows, att_pts, at_err)
        where = (
            f"{best['label']} {best['op']} at {int(best['tokens'])} tokens"
            if best["family"] == "cpu_matmul"
            else f"attention {best['op']} {best['label']}"
        )
        isa_specs[isa] = {
            "present": True,
            "per_core_tflops": per_core,
            "matmul_efficiency": [p.model_dump() for p in mm],
            "attention_efficiency": [p.model_dump() for p in at],
            "backend": res.get("backend", "onednn"),
            "kernel_observed": _kernel_summary(lin_rows + att_rows),
        }
        env = res.get("env_set") or {}
        cap = ", ".join(f"{k}={v}" for k, v in env.items()) or "no ISA cap (the default path)"
        source[f"isa.{isa}.per_core_tflops"] = (
            f"{stamp}: best achieved rate {peak_raw / FLOPS_PER_TFLOPS:.3g} TFLOPS ({where}) / {ctx.threads} cores "
            f"with {cap}; kernels seen: {_kernel_summary(lin_rows + att_rows)}"
        )
        source[f"isa.{isa}.matmul_efficiency"] = (
            f"{stamp}: fitted to {len(lin_pts)} linear-layer timings (catalog (K, N), tokens "
            f"{min(p.tokens for p in lin_pts)}-{max(p.tokens for p in lin_pts)}) so that max(FLOPs/(peak x eff), "
            f"bytes/bandwidth) + op_overhead reproduces them: {error_summary(mm_err)}"
        )
        source[f"isa.{isa}.attention_efficiency"] = (
            f"{stamp}: fitted to {len(att_pts)} attention score/context timings (keyed by query tokens q): "
            f"{error_summary(at_err)}"
        )
    return {
        "name": slug(host.cpu_model),
        "description": f"{host.cpu_model}, {ctx.threads} cores in use ({stamp})",
        "cores": ctx.threads,
        "memory_read_gbps": mem_gbps,
        "op_overhead_us": overhead_us,
        "isa": isa_specs,
        "source": source,
    }


# ---------------------------------------------------------------- memory tiers


def _local_read(ctx: Context, rows: list[dict]) -> dict:
    reads = _rows(rows, family="host_memory", op="read", numa_node=ctx.host.local_node) or _rows(
        rows, family="host_memory", op="read"
    )
    if not reads:
        raise LiaInputError(
            "ddr.read_gbps",
            "the host-memory read benchmark produced no time",
            "see the calibration log for the host_memory family",
        )
    return reads[0]


def _local_read_gbps(ctx: Context, rows: list[dict]) -> float:
    read = _local_read(ctx, rows)
    return read["bytes"] / read["time_s"] / BYTES_PER_S_PER_GBPS


def ddr_spec(ctx: Context, rows: list[dict]) -> dict[str, Any]:
    host, stamp = ctx.host, ctx.stamp
    read = _local_read_gbps(ctx, rows)
    size_mib = int(_local_read(ctx, rows)["size_bytes"]) >> 20
    cpu_nodes = ", ".join(str(n.node) for n in host.cpu_nodes) or "0"
    return {
        "name": f"{host.codename}-ddr",
        "tier": "ddr",
        "description": f"host memory of NUMA node(s) {cpu_nodes} ({stamp})",
        "capacity_gib": rounded(host.ddr_capacity_bytes / BYTES_PER_GIB, 4),
        "read_gbps": rounded(read, 4),
        "source": {
            "capacity_gib": f"{stamp}: /proc/meminfo MemTotal less CPU-less (CXL) NUMA nodes",
            "read_gbps": f"{stamp}: sum over a {size_mib} MiB fp32 buffer on node {host.local_node}, all cores (median)",
        },
    }


def cxl_spec(ctx: Context, rows: list[dict]) -> Optional[dict[str, Any]]:
    host, stamp = ctx.host, ctx.stamp
    nodes = [n for n in host.cxl_nodes if _rows(rows, family="host_memory", op="read", numa_node=n.node)]
    if not nodes:
        return None
    reads = [_rows(rows, family="host_memory", op="read", numa_node=n.node)[0] for n in nodes]
    read = sum(r["bytes"] / r["time_s"] for r in reads) / BYTES_PER_S_PER_GBPS
    local = _rows(rows, family="host_memory", op="chase", numa_node=host.local_node)
    chases = [_rows(rows, family="host_memory", op="chase", numa_node=n.node) for n in nodes]
    # The extra load latency is kept in the description only: the cost model reads bandwidths, not latency.
    if local and all(chases):
        added = statistics.fmean(c[0]["time_s"] for c in chases) - local[0]["time_s"]
        latency = (
            f"; dependent-load chase {1e9 * max(0.0, added):.0f} ns slower than on node {host.local_node} "
            f"({1e9 * local[0]['time_s']:.0f} ns per step there)"
        )
    else:
        latency = ""
    ids = ", ".join(str(n.node) for n in nodes)
    return {
        "name": f"{host.codename}-cxl",
        "tier": "cxl",
        "description": f"CPU-less NUMA node(s) {ids}: CXL memory ({stamp}){latency}",
        "capacity_gib": rounded(sum(n.mem_total_bytes for n in nodes) / BYTES_PER_GIB, 4),
        "read_gbps": rounded(read, 4),
        "source": {
            "capacity_gib": f"{stamp}: MemTotal of CPU-less NUMA node(s) {ids}",
            "read_gbps": (
                f"{stamp}: sum over a 1 GiB buffer bound to each CPU-less node, all cores"
                + (" (sum over the nodes: the tier interleaves them)" if len(nodes) > 1 else "")
            ),
        },
    }


# ---------------------------------------------------------------- GPU and link


def _from_datasheet(spec: dict[str, Any], where: str, reason: str) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out["source"] = {
        k: f"not measured ({reason}); from datasheet profile {where}: {v}" for k, v in spec.get("source", {}).items()
    }
    out["description"] = f"{spec.get('description', '')} [datasheet values: {reason}]".strip()
    return out


def gpu_spec(ctx: Context, rows: list[dict]) -> dict[str, Any]:
    info, stamp = ctx.gpu_info, ctx.stamp
    lin = _rows(rows, family="gpu_matmul")
    att = _rows(rows, family="gpu_attention")
    copy_rows = _rows(rows, family="gpu_memory", op="copy")
    if info is None or not lin or not att or not copy_rows:
        reason = ctx.gpu_skip_reason or "the GPU benchmarks produced no timings"
        return _from_datasheet(ctx.gpu_datasheet, ctx.gpu_datasheet_where, reason)
    hbm_gbps = rounded(copy_rows[0]["bytes"] / copy_rows[0]["time_s"] / BYTES_PER_S_PER_GBPS, 5)
    hbm = hbm_gbps * BYTES_PER_S_PER_GBPS
    overhead = _rows(rows, family="gpu_overhead")
    overhead_us = rounded(overhead_seconds(overhead) / S_PER_US, 4) if overhead else 0.0
    overhead_s = overhead_us * S_PER_US
    lin_pts, att_pts = measured_points(lin, att)
    peak_tflops = rounded(peak_rate(lin_pts + att_pts) / FLOPS_PER_TFLOPS)
    peak = peak_tflops * FLOPS_PER_TFLOPS
    best = max(lin + att, key=lambda r: r["flops"] / r["time_s"])
    mm = fit_table(lin_pts, peak, hbm, overhead_s)
    at = fit_table(att_pts, peak, hbm, overhead_s)
    mm_err, at_err = fit_errors(lin_pts, mm, peak, hbm, overhead_s), fit_errors(att_pts, at, peak, hbm, overhead_s)
    _annotate(lin, lin_pts, mm_err)
    _annotate(att, att_pts, at_err)
    return {
        "name": slug(info["name"]),
        "description": f"{info['name']}, compute capability {info['capability']}, {info['sm_count']} SMs ({stamp})",
        "memory_gib": rounded(info["memory_gib"], 5),
        "reserved_gib": rounded(info["reserved_gib"], 4),
        "hbm_gbps": hbm_gbps,
        "bf16_peak_tflops": peak_tflops,
        "matmul_efficiency": [p.model_dump() for p in mm],
        "attention_efficiency": [p.model_dump() for p in at],
        "op_overhead_us": overhead_us,
        "source": {
            "memory_gib": f"{stamp}: torch.cuda.get_device_properties(0).total_memory",
            "reserved_gib": (
                f"{stamp}: total - free device memory after the CUDA context, a cuBLAS handle and "
                f"one product (torch.cuda.mem_get_info), before any benchmark buffer"
            ),
            "hbm_gbps": f"{stamp}: device-to-device copy of {int(copy_rows[0]['size_bytes']) >> 20} MiB, "
            f"bytes read + written per second",
            "bf16_peak_tflops": (
                f"{stamp}: best achieved bf16 rate ({best['label']} {best['op']}, "
                f"{int(best['tokens'])} tokens), not the datasheet peak: the efficiency tables are "
                f"relative to it, so they stay <= 1 and reproduce the measured times"
            ),
            "matmul_efficiency": (
                f"{stamp}: fitted to {len(lin_pts)} cuBLAS linear timings (catalog (K, N), tokens "
                f"1-{max(p.tokens for p in lin_pts)}): {error_summary(mm_err)}"
            ),
            "attention_efficiency": f"{stamp}: fitted to {len(att_pts)} bmm score/context timings: "
            f"{error_summary(at_err)}",
            "op_overhead_us": f"{stamp}: wall-clock per call of 200 back-to-back 1x64 @ 64x64 linears then a sync",
        },
    }


def _link_gbps(rows: list[dict], op: str, pinned: str, node: int) -> tuple[float, int]:
    pts = [
        r
        for r in _rows(rows, family="pcie", op=op, pinned=pinned, numa_node=node)
        if r["size_bytes"] >= LINK_BANDWIDTH_MIN_BYTES
    ]
    if not pts:
        pts = _rows(rows, family="pcie", op=op, pinned=pinned, numa_node=node)
        pts = [max(pts, key=lambda r: r["size_bytes"])] if pts else []
    if not pts:
        return 0.0, 0
    return statistics.median(r["bytes"] / r["time_s"] for r in pts) / BYTES_PER_S_PER_GBPS, len(pts)


def link_spec(ctx: Context, rows: list[dict]) -> dict[str, Any]:
    stamp = ctx.stamp
    node = ctx.host.local_node
    if not _rows(rows, family="pcie", numa_node=node):
        nodes = sorted({r["numa_node"] for r in _rows(rows, family="pcie")})
        node = nodes[0] if nodes else node
    figures = {
        field: _link_gbps(rows, op, pinned, node)
        for field, op, pinned in (
            ("h2d_gbps", "h2d", "pinned"),
            ("d2h_gbps", "d2h", "pinned"),
            ("pageable_h2d_gbps", "h2d", "pageable"),
            ("pageable_d2h_gbps", "d2h", "pageable"),
        )
    }
    latency = _rows(rows, family="pcie", op="h2d_latency", numa_node=node)
    if ctx.gpu_info is None or not latency or any(v <= 0 for v, _ in figures.values()):
        reason = ctx.gpu_skip_reason or "the PCIe benchmarks produced no timings"
        return _from_datasheet(ctx.link_datasheet, ctx.link_datasheet_where, reason)
    out: dict[str, Any] = {
        "name": "pcie-" + slug(ctx.gpu_info["name"]),
        "description": f"host <-> {ctx.gpu_info['name']} {ctx.link_description} ({stamp})".replace("  ", " "),
    }
    source = {}
    for f, (value, count) in figures.items():
        out[f] = rounded(value, 4)
        source[f] = (
            f"{stamp}: median bandwidth over {count} copy size(s) from 64 MiB to 1 GiB, host buffer on "
            f"node {node} (per-size figures in the raw CSV)"
        )
    out["transfer_latency_us"] = rounded(latency[0]["time_s"] / S_PER_US, 4)
    source["transfer_latency_us"] = f"{stamp}: one 4 KiB pinned h2d copy plus synchronize, wall clock (median)"
    out["source"] = source
    return out


# ---------------------------------------------------------------- the system


def system_profile(ctx: Context, rows: list[dict]) -> dict[str, Any]:
    """The whole profile. Annotates ``rows`` with the fit's predictions (pred_time_s, fit_error_rel)."""
    host, stamp = ctx.host, ctx.stamp
    cpu = cpu_spec(ctx, rows)
    gpu = gpu_spec(ctx, rows)
    link = link_spec(ctx, rows)
    ddr = ddr_spec(ctx, rows)
    cxl = cxl_spec(ctx, rows)
    gpu_words = ctx.gpu_info["name"] if ctx.gpu_info else f"no GPU measured ({gpu['name']} datasheet values)"
    notes = list(ctx.notes)
    if cxl is None:
        notes.append(
            "no cxl tier: "
            + (
                "no CPU-less NUMA node"
                if not host.cxl_nodes
                else "CPU-less nodes were not measured (no libnuma to bind memory to them)"
            )
        )
    return {
        "name": ctx.name,
        "description": f"Calibrated on {host.hostname} on {ctx.date}: {host.cpu_model} ({ctx.threads} cores) + "
        f"{gpu_words}",
        "cpu": cpu,
        "gpu": gpu,
        "link": link,
        "ddr": ddr,
        "cxl": cxl,
        "host_reserved_gib": rounded(host.in_use_gib, 4),
        "memory_headroom_fraction": 0.05,
        "provenance": {
            "host": host.hostname,
            "date": ctx.date,
            "command": ctx.command,
            "versions": ctx.versions,
            "notes": notes,
        },
        "source": {
            "host_reserved_gib": (
                f"{stamp}: MemTotal - MemAvailable when calibration started (the OS and other "
                f"processes; a runtime's own staging buffers are not included)"
            ),
            "memory_headroom_fraction": "assumption: 5% of each tier left free for fragmentation (as the datasheet "
            "systems)",
        },
    }
