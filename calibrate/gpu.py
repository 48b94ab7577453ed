"""The GPU: matmul at the catalog's linear shapes (GEMV is tokens = 1), attention, device-memory copy
bandwidth, memory size and what the CUDA context takes, and the per-op overhead.

Kernels are timed with CUDA events (``timing.time_cuda``). Operands smaller than four times the L2 cache
are cycled through several copies so that each call reads them from HBM, as a runtime's layers do.
``reserved_gib`` is total minus free device memory right after the CUDA context, a cuBLAS handle and a
first product exist (before any benchmark buffer), so it includes other processes' use of the device.
"""

from __future__ import annotations

import time
from typing import Any

from calibrate.records import row, timed_row
from calibrate.shapes import gpu_attention_plan, gpu_matmul_plan
from calibrate.tensors import copies_to_stream, cycling, fill_varied
from lia_model.units import BYTES_PER_GIB


def cuda_status() -> tuple[bool, str]:
    """(usable, reason when not)."""
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is built without CUDA (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False (no CUDA device or driver visible)"
    return True, ""


def device_info() -> dict[str, Any]:
    """Properties and the context's memory footprint; call before allocating benchmark buffers."""
    import torch

    torch.cuda.init()
    a = torch.ones(64, 64, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # creates the cuBLAS handle and workspace
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "total_bytes": int(props.total_memory),
        "mem_get_info_total_bytes": int(total),
        "free_bytes_at_start": int(free),
        "reserved_gib": (total - free) / BYTES_PER_GIB,
        "memory_gib": props.total_memory / BYTES_PER_GIB,
        "sm_count": props.multi_processor_count,
        "capability": f"{props.major}.{props.minor}",
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
    }


def _matmul_rows(quick: bool, l2_bytes: int, budget_s: float, deadline: float) -> list[dict]:
    import torch

    backend = f"torch {torch.__version__} (cuBLAS, CUDA {torch.version.cuda})"
    rows: list[dict] = []
    groups: dict[Any, list] = {}
    for p in gpu_matmul_plan(quick):
        groups.setdefault(p.shape, []).append(p)
    per_point = 0.01 if quick else 0.02
    for shape, pts in groups.items():
        if time.perf_counter() > deadline:
            rows += [
                row(
                    "gpu_matmul",
                    "linear",
                    label=shape.label,
                    backend=backend,
                    dtype="bfloat16",
                    tokens=p.tokens,
                    k=shape.k,
                    n=shape.n,
                    flops=p.flops,
                    bytes=2.0 * (shape.k * shape.n + p.tokens * (shape.k + shape.n)),
                    note=f"skipped: the GPU time budget ({budget_s:.0f} s) was spent",
                )
                for p in pts
            ]
            continue
        copies = copies_to_stream(2 * shape.k * shape.n, l2_bytes)
        weights = [
            fill_varied(torch.empty(shape.n, shape.k, dtype=torch.bfloat16, device="cuda")) for _ in range(copies)
        ]
        for p in sorted(pts, key=lambda p: p.tokens):
            x = fill_varied(torch.empty(p.tokens, shape.k, dtype=torch.bfloat16, device="cuda"))
            fn = cycling([(lambda w=w: torch.nn.functional.linear(x, w)) for w in weights])
            from calibrate.timing import time_cuda

            timing = time_cuda(fn, budget_s=per_point)
            rows.append(
                timed_row(
                    "gpu_matmul",
                    "linear",
                    timing,
                    label=shape.label,
                    backend=backend,
                    dtype="bfloat16",
                    tokens=p.tokens,
                    k=shape.k,
                    n=shape.n,
                    flops=p.flops,
                    bytes=2.0 * (shape.k * shape.n + p.tokens * (shape.k + shape.n)),
                    note=f"{copies} weight copies cycled" if copies > 1 else None,
                )
            )
        del weights
    return rows


def _attention_rows(quick: bool, l2_bytes: int, budget_s: float, deadline: float) -> list[dict]:
    import torch

    backend = f"torch {torch.__version__} (cuBLAS bmm, CUDA {torch.version.cuda})"
    rows = []
    for p in gpu_attention_plan(quick):
        bh = p.batch * p.heads
        kv_bytes = 2 * bh * p.s * p.head_dim
        nbytes = float(kv_bytes + 2 * bh * p.q * p.head_dim + 2 * bh * p.q * p.s)
        common = dict(
            label=p.label,
            backend=backend,
            dtype="bfloat16",
            tokens=p.batch * p.q,
            batch=p.batch,
            heads=p.heads,
            q=p.q,
            s=p.s,
            head_dim=p.head_dim,
            flops=p.flops,
            bytes=nbytes,
        )
        if time.perf_counter() > deadline:
            rows += [
                row("gpu_attention", op, **common, note=f"skipped: the GPU time budget ({budget_s:.0f} s) was spent")
                for op in ("score", "context")
            ]
            continue
        copies = copies_to_stream(kv_bytes, l2_bytes)
        for op, timing in _attention_point(p, copies, 0.01 if quick else 0.02):
            rows.append(
                timed_row(
                    "gpu_attention", op, timing, **common, note=f"{copies} KV copies cycled" if copies > 1 else None
                )
            )
    return rows


def _attention_point(p: Any, copies: int, budget_s: float) -> list[tuple[str, Any]]:
    """Score and context timings of one point (its operands are freed on return)."""
    import torch

    from calibrate.timing import time_cuda

    bh = p.batch * p.heads
    q = fill_varied(torch.empty(bh, p.q, p.head_dim, dtype=torch.bfloat16, device="cuda"))
    ks = [fill_varied(torch.empty(bh, p.s, p.head_dim, dtype=torch.bfloat16, device="cuda")) for _ in range(copies)]
    vs = [fill_varied(torch.empty(bh, p.s, p.head_dim, dtype=torch.bfloat16, device="cuda")) for _ in range(copies)]
    scores = torch.bmm(q, ks[0].transpose(1, 2))
    score = cycling([(lambda k=k: torch.bmm(q, k.transpose(1, 2))) for k in ks])
    context = cycling([(lambda v=v: torch.bmm(torch.softmax(scores, dim=-1), v)) for v in vs])
    return [("score", time_cuda(score, budget_s=budget_s)), ("context", time_cuda(context, budget_s=budget_s))]


def _memory_rows(quick: bool) -> list[dict]:
    import torch

    from calibrate.timing import time_cuda

    size = (256 << 20) if quick else (1 << 30)
    src = torch.ones(size, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    timing = time_cuda(lambda: dst.copy_(src), budget_s=0.05 if quick else 0.2)
    out = [
        timed_row(
            "gpu_memory",
            "copy",
            timing,
            label=f"device copy {size >> 20} MiB",
            dtype="uint8",
            size_bytes=size,
            bytes=2.0 * size,
            note="bytes = read + written (2x the size): the bandwidth HBM sustains",
        )
    ]
    return out


def _overhead_row() -> dict:
    import torch

    from calibrate.timing import time_host

    x = torch.ones(1, 64, dtype=torch.bfloat16, device="cuda")
    w = torch.ones(64, 64, dtype=torch.bfloat16, device="cuda")
    calls = 200

    def burst() -> None:
        for _ in range(calls):
            torch.nn.functional.linear(x, w)
        torch.cuda.synchronize()

    timing = time_host(burst, budget_s=0.1, min_samples=5)
    return row(
        "gpu_overhead",
        "tiny_linear",
        label="1x64 @ 64x64, 200 back-to-back calls then sync",
        dtype="bfloat16",
        tokens=1,
        k=64,
        n=64,
        time_s=timing.median_s / calls,
        time_s_min=timing.min_s / calls,
        time_s_max=timing.max_s / calls,
        samples=timing.samples,
        flops=2.0 * 64 * 64,
        note="wall-clock per call: launch and dispatch cost of one small op",
    )


def measure(quick: bool, budget_s: float) -> list[dict]:
    """GPU rows; call ``device_info`` first (reserved memory is read before these buffers exist)."""
    import torch

    deadline = time.perf_counter() + budget_s
    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) or 0)
    rows = [_overhead_row()]
    rows += _memory_rows(quick)
    rows += _matmul_rows(quick, l2, budget_s, deadline)
    rows += _attention_rows(quick, l2, budget_s, deadline + 0.2 * budget_s)
    torch.cuda.empty_cache()
    return rows


def info_rows(info: dict[str, Any]) -> list[dict]:
    """The device's memory figures as rows, so the CSV alone says everything the profile does."""
    return [
        row(
            "gpu_info",
            "memory_total",
            label=info["name"],
            size_bytes=info["total_bytes"],
            note="torch.cuda.get_device_properties(0).total_memory",
        ),
        row(
            "gpu_info",
            "memory_used_at_start",
            label=info["name"],
            size_bytes=info["mem_get_info_total_bytes"] - info["free_bytes_at_start"],
            note="total - free (torch.cuda.mem_get_info) after context, cuBLAS handle and one product",
        ),
    ]
