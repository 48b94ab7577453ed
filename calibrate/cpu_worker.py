"""One CPU ISA's matmul and attention measurements, run in a subprocess.

``python -m calibrate.cpu_worker --isa avx512_bf16 --threads 16 --budget-s 40 --out result.json [--quick]``

The parent caps oneDNN's ISA with ``ONEDNN_MAX_CPU_ISA`` (read once, when oneDNN starts, hence one
process per ISA) and MKL's with ``MKL_ENABLE_INSTRUCTIONS``. The worker first runs a probe product with
verbose on: if the kernel that ran is not the ISA asked for (no AMX kernel on a CPU without AMX, MKL's
generic path on a non-Intel CPU), the ISA is reported absent with what did run, and nothing is timed.
Otherwise every point's warm-up call is observed too, so each row names the kernel behind its number.

Weights and KV caches smaller than four times the last-level cache are cycled through several copies, so
that each call streams its operands from memory as a runtime does (every layer has its own weights and
cache); otherwise a repeated small GEMV would read its weight from cache and look faster than it is.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any, Callable

from calibrate.records import row, timed_row
from calibrate.shapes import AttentionPoint, MatmulPoint, attention_plan, matmul_plan
from calibrate.tensors import copies_to_stream, cycling, fill_varied
from calibrate.verbose import KernelReport, mkl_isa_tag, observe

# ISA -> (dtype, accept(report) -> bool, what was expected)
ISA_DTYPES = {"amx_bf16": "bfloat16", "avx512_bf16": "bfloat16", "avx512_fp32": "float32", "avx2_fp32": "float32"}
# Per-call FLOP caps for the slow ISAs in a full run (see shapes.matmul_plan); AMX measures everything.
FLOP_CAPS = {"amx_bf16": float("inf"), "avx512_bf16": 2.6e11, "avx512_fp32": 1.6e11, "avx2_fp32": 1.0e11}
# Timed seconds per point: enough samples for a stable median, small enough for the run's budget.
POINT_BUDGET_S = {True: 0.04, False: 0.12}


def accepts(isa: str, report: KernelReport) -> tuple[bool, str]:
    """Whether the probe ran a kernel of ``isa``; and the observed kernel in words."""
    kernels = set(report.onednn_kernels)
    seen = ", ".join(sorted(kernels)) or (
        f"MKL {report.mkl_calls[0]} on its '{report.mkl_dispatch}' code path"
        if report.mkl_calls
        else "no oneDNN or MKL kernel"
    )
    if isa == "amx_bf16":
        ok = any("amx" in k for k in kernels)
    elif isa == "avx512_bf16":
        ok = any("avx512_core_bf16" in k for k in kernels) and not any("amx" in k for k in kernels)
    elif isa == "avx512_fp32":
        ok = (bool(report.mkl_calls) and mkl_isa_tag(report.mkl_dispatch).startswith("avx512")) or any(
            "avx512_core" in k and "bf16" not in k and "amx" not in k for k in kernels
        )
    else:  # avx2_fp32: any fp32 kernel below AVX-512 (MKL's AVX2 or generic path, oneDNN's avx2 kernels)
        ok = (bool(report.mkl_calls) and mkl_isa_tag(report.mkl_dispatch) in ("avx2", "generic")) or any(
            "avx2" in k for k in kernels
        )
    return ok, seen


def _matmul_rows(
    isa: str,
    dtype: "Any",
    points: list[MatmulPoint],
    budget_s: float,
    deadline: float,
    threads: int,
    backend: str,
    quick: bool,
    llc_bytes: int,
    linear_factory: Callable | None = None,
) -> list[dict]:
    import torch

    rows: list[dict] = []
    esize = torch.empty(0, dtype=dtype).element_size()
    groups: dict[Any, list[MatmulPoint]] = {}
    for p in points:
        groups.setdefault(p.shape, []).append(p)
    for shape, pts in groups.items():
        headline = any(p.priority == 0 for p in pts)  # headline points always run, however slow the machine
        if time.perf_counter() > deadline and not headline:
            for p in pts:
                nbytes = esize * (shape.k * shape.n + p.tokens * (shape.k + shape.n))
                rows.append(
                    row(
                        "cpu_matmul",
                        "linear",
                        label=shape.label,
                        backend=backend,
                        isa=isa,
                        dtype=str(dtype)[6:],
                        tokens=p.tokens,
                        k=shape.k,
                        n=shape.n,
                        threads=threads,
                        flops=p.flops,
                        bytes=float(nbytes),
                        note=f"skipped: the ISA's time budget ({budget_s:.0f} s) was spent",
                    )
                )
            continue
        copies = copies_to_stream(shape.n * shape.k * esize, llc_bytes)
        weights = [fill_varied(torch.empty(shape.n, shape.k, dtype=dtype)) for _ in range(copies)]
        if linear_factory is not None:
            layers = [linear_factory(w) for w in weights]
        else:
            layers = [(lambda x, w=w: torch.nn.functional.linear(x, w)) for w in weights]
        for p in sorted(pts, key=lambda p: p.tokens):
            nbytes = esize * (shape.k * shape.n + p.tokens * (shape.k + shape.n))
            common = dict(
                label=shape.label,
                backend=backend,
                isa=isa,
                dtype=str(dtype)[6:],
                tokens=p.tokens,
                k=shape.k,
                n=shape.n,
                threads=threads,
                flops=p.flops,
                bytes=float(nbytes),
            )
            if time.perf_counter() > deadline and p.priority != 0:
                rows.append(
                    row(
                        "cpu_matmul",
                        "linear",
                        **common,
                        note=f"skipped: the ISA's time budget ({budget_s:.0f} s) was spent",
                    )
                )
                continue
            x = fill_varied(torch.empty(p.tokens, shape.k, dtype=dtype))
            fn = cycling([(lambda layer=layer: layer(x)) for layer in layers])
            report = observe(fn)  # the warm-up call (kernel generation), observed
            from calibrate.timing import time_host

            timing = time_host(fn, budget_s=POINT_BUDGET_S[quick], warmup=False)
            rows.append(
                timed_row(
                    "cpu_matmul",
                    "linear",
                    timing,
                    kernel_observed=report.summary,
                    note=f"{copies} weight copies cycled" if copies > 1 else None,
                    **common,
                )
            )
        del weights, layers
    return rows


def _attention_rows(
    isa: str,
    dtype: "Any",
    points: list[AttentionPoint],
    budget_s: float,
    deadline: float,
    threads: int,
    backend: str,
    quick: bool,
    llc_bytes: int,
) -> list[dict]:
    import torch

    from calibrate.timing import time_host

    rows = []
    esize = torch.empty(0, dtype=dtype).element_size()
    kinds_done: set[bool] = set()
    for p in points:
        bh = p.batch * p.heads
        kv_bytes = bh * p.s * p.head_dim * esize
        act_bytes = bh * p.q * p.head_dim * esize
        score_bytes = bh * p.q * p.s * esize
        common = dict(
            label=p.label,
            backend=backend,
            isa=isa,
            dtype=str(dtype)[6:],
            tokens=p.batch * p.q,
            batch=p.batch,
            heads=p.heads,
            q=p.q,
            s=p.s,
            head_dim=p.head_dim,
            threads=threads,
            flops=p.flops,
        )
        first_of_kind = (p.q == 1) not in kinds_done  # one decode and one prefill point always run
        if time.perf_counter() > deadline and not first_of_kind:
            for op in ("score", "context"):
                rows.append(
                    row(
                        "cpu_attention",
                        op,
                        **common,
                        note=f"skipped: the ISA's time budget ({budget_s:.0f} s) was spent",
                    )
                )
            continue
        copies = copies_to_stream(kv_bytes, llc_bytes)
        q = fill_varied(torch.empty(bh, p.q, p.head_dim, dtype=dtype))
        ks = [fill_varied(torch.empty(bh, p.s, p.head_dim, dtype=dtype)) for _ in range(copies)]
        vs = [fill_varied(torch.empty(bh, p.s, p.head_dim, dtype=dtype)) for _ in range(copies)]
        scores = torch.bmm(q, ks[0].transpose(1, 2))
        score = cycling([(lambda k=k: torch.bmm(q, k.transpose(1, 2))) for k in ks])
        context = cycling([(lambda v=v: torch.bmm(torch.softmax(scores, dim=-1), v)) for v in vs])
        for op, fn, nbytes in (
            ("score", score, kv_bytes + act_bytes + score_bytes),
            ("context", context, kv_bytes + act_bytes + score_bytes),
        ):
            report = observe(fn)
            timing = time_host(fn, budget_s=POINT_BUDGET_S[quick], warmup=False)
            rows.append(
                timed_row(
                    "cpu_attention",
                    op,
                    timing,
                    kernel_observed=report.summary,
                    bytes=float(nbytes),
                    note=f"{copies} KV copies cycled" if copies > 1 else None,
                    **common,
                )
            )
        kinds_done.add(p.q == 1)
        del ks, vs
    return rows


def _ipex(
    isa: str,
    dtype: Any,
    points: list[MatmulPoint],
    budget_s: float,
    deadline: float,
    threads: int,
    quick: bool,
    llc_bytes: int,
) -> tuple[dict, list[dict]]:
    """IPEX's linear kernels at the headline points, when intel_extension_for_pytorch imports."""
    try:
        import intel_extension_for_pytorch as ipex  # type: ignore[import-not-found]
    except Exception as err:  # ImportError, or an IPEX built for another torch (RuntimeError)
        return {"available": False, "reason": f"intel_extension_for_pytorch does not import: {err}"}, []
    import torch

    def factory(weight: Any) -> Callable:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
        layer = ipex.optimize(layer.eval(), dtype=dtype, inplace=True)

        def run(x: Any) -> Any:
            with torch.no_grad():
                return layer(x)

        return run

    head = [p for p in points if p.priority == 0]
    rows = _matmul_rows(
        isa, dtype, head, budget_s, deadline, threads, f"ipex {ipex.__version__}", quick, llc_bytes, factory
    )
    return {"available": True, "version": ipex.__version__}, rows


def run(isa: str, threads: int, budget_s: float, quick: bool, llc_bytes: int = 0) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, ISA_DTYPES[isa])
    start = time.perf_counter()
    # 80% of the budget for the linear layers, the rest (at least) for attention: both tables are needed
    matmul_deadline = start + 0.8 * budget_s
    probe_x = torch.ones(64, 1024, dtype=dtype)
    probe_w = torch.ones(1024, 1024, dtype=dtype)
    probe = observe(lambda: torch.nn.functional.linear(probe_x, probe_w))
    ok, seen = accepts(isa, probe)
    result: dict[str, Any] = {
        "isa": isa,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "env": {
            k: os.environ.get(k, "")
            for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_NUM_THREADS")
        },
        "probe": asdict(probe),
        "probe_kernel": seen,
        "present": ok,
        "torch": torch.__version__,
        "rows": [],
    }
    mkl = "mkl" if not probe.onednn_kernels and probe.mkl_calls else "onednn"
    backend = f"torch {torch.__version__} ({mkl})"
    result["backend"] = backend
    if not ok:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or "none (default)"
        result["absent_reason"] = (
            f"no {isa} kernel observed: a {ISA_DTYPES[isa]} linear ran {seen} "
            f"(ONEDNN_MAX_CPU_ISA cap: {cap}; oneDNN's ISA: {probe.onednn_isa_info or '?'})"
        )
        return result
    rows = _matmul_rows(
        isa,
        dtype,
        matmul_plan(quick, FLOP_CAPS[isa] if not quick else float("inf")),
        budget_s,
        matmul_deadline,
        threads,
        backend,
        quick,
        llc_bytes,
    )
    deadline = max(start + budget_s, time.perf_counter() + 0.2 * budget_s)
    rows += _attention_rows(isa, dtype, attention_plan(quick), budget_s, deadline, threads, backend, quick, llc_bytes)
    if isa != "avx512_fp32":
        result["ipex"], ipex_rows = _ipex(
            isa, dtype, matmul_plan(quick), budget_s, deadline + 0.25 * budget_s, threads, quick, llc_bytes
        )
        rows += ipex_rows
    result["rows"] = rows
    result["elapsed_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", required=True, choices=sorted(ISA_DTYPES))
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--llc-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.isa, args.threads, args.budget_s, args.quick, args.llc_bytes)
    with open(args.out, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
