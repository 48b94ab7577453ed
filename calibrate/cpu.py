"""CPU matrix throughput per ISA (one worker subprocess each) and the CPU's per-op overhead.

ISA caps (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once at start-up, so each ISA needs its own process):
  amx_bf16     no cap: the default path a stock PyTorch bf16 matmul takes (AMX kernels where present)
  avx512_bf16  ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16: AVX-512 with the bf16 dot-product instructions
  avx512_fp32  ONEDNN_MAX_CPU_ISA=AVX512_CORE and MKL_ENABLE_INSTRUCTIONS=AVX512: an fp32 matmul (MKL sgemm
               in stock PyTorch)
  avx2_fp32    ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2: an fp32 matmul on the AVX2 path; measured
               only when none of the ISAs above is present, so that every x86-64 machine calibrates something
Threads: one per physical core of the process's affinity, bound with OMP_PROC_BIND=close and
OMP_PLACES=cores (unless turned off) so that no two threads share a core and the numbers are repeatable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable

from calibrate.records import timed_row

ISAS = ("amx_bf16", "avx512_bf16", "avx512_fp32", "avx2_fp32")
FALLBACK_ISAS = ("avx2_fp32",)  # measured only when no ISA before them is present
ISA_ENV: dict[str, dict[str, str]] = {
    "amx_bf16": {},
    "avx512_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx512_fp32": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "avx2_fp32": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
_CLEARED = (
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
    "MKL_VERBOSE",
    "OMP_NUM_THREADS",
    "OMP_PROC_BIND",
    "OMP_PLACES",
)


def worker_env(isa: str, threads: int, bind: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(ISA_ENV[isa])
    env["OMP_NUM_THREADS"] = str(threads)
    if bind:
        env["OMP_PROC_BIND"] = "close"
        env["OMP_PLACES"] = "cores"
    return env


def run_isa(
    isa: str, threads: int, budget_s: float, quick: bool, llc_bytes: int, bind: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run one ISA's worker; a failed or timed-out worker becomes an absent ISA with the reason."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "calibrate.cpu_worker",
            "--isa",
            isa,
            "--threads",
            str(threads),
            "--budget-s",
            f"{budget_s:.1f}",
            "--out",
            out,
            "--llc-bytes",
            str(llc_bytes),
        ]
        if quick:
            cmd.append("--quick")
        timeout = budget_s * 1.5 + 90  # start-up, allocation and the last point past the budget
        try:
            proc = subprocess.run(
                cmd, env=worker_env(isa, threads, bind), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {
                "isa": isa,
                "present": False,
                "rows": [],
                "failed": True,
                "absent_reason": f"not measured: the worker ran past its {timeout:.0f} s limit",
            }
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        if proc.stderr.strip():
            log(f"[{isa} worker stderr] " + " / ".join(tail))
        if proc.returncode != 0 or not os.path.exists(out):
            return {
                "isa": isa,
                "present": False,
                "rows": [],
                "failed": True,
                "absent_reason": f"not measured: the worker failed (exit {proc.returncode}): {' / '.join(tail)}",
            }
        with open(out) as fh:
            result = json.load(fh)
    result["env_set"] = ISA_ENV[isa]
    return result


def op_overhead_row(threads: int) -> dict[str, Any]:
    """A tiny bf16 linear (1 x 64 @ 64 x 64) in this process: dispatch and thread wake-up, no real work."""
    import torch

    from calibrate.timing import time_host

    torch.set_num_threads(threads)
    x = torch.ones(1, 64, dtype=torch.bfloat16)
    w = torch.ones(64, 64, dtype=torch.bfloat16)
    timing = time_host(lambda: torch.nn.functional.linear(x, w), budget_s=0.05, min_sample_s=2e-3)
    return timed_row(
        "cpu_overhead",
        "tiny_linear",
        timing,
        label="1x64 @ 64x64",
        dtype="bfloat16",
        backend=f"torch {torch.__version__}",
        tokens=1,
        k=64,
        n=64,
        threads=threads,
        flops=2.0 * 64 * 64,
    )
