"""GPU-host campaign for issue 12 (precision): time the runtime's low-precision linears and check them.

One command (on the GPU host, from the repository root; writes CSVs under OUT and prints a short table):

    python tools/precision_bench.py --out "$OUT"            # CPU and, where CUDA is present, GPU
    python tools/precision_bench.py --out "$OUT" --quick    # two shapes, two token counts (a smoke run)
    python tools/precision_bench.py --out /tmp/pb --tiny     # one small shape: checks the script on any machine

For each device (cpu; cuda when present), each linear shape of OPT-175B and Llama-3.1-70B (qkv, out_proj, fc1,
fc2; weight N x K as lia_model.accounting.linear_shape gives it) and each token count, it times (median of
--reps calls after warm-up, torch.cuda.synchronize on the GPU):
  bf16          runtime.kernels.linear with bf16 weights
  int8_fused    runtime.kernels.linear_int8(fused=True): torch's _weight_int8pack_mm (where the device has it)
  int8_dequant  runtime.kernels.linear_int8(fused=False): dequantise, then the bf16 GEMM
  fp8           runtime.kernels.linear_fp8 through torch._scaled_mm (CUDA with compute capability >= 8.9 only)
  dequant       runtime.kernels.dequantize_int8 alone: weight elements / s = a measured dequant_gelems_per_s
and checks every output against the dequantised reference (max |error| / max |reference|).

Files: OUT/precision_kernels.csv (device, model, sublayer, n, k, tokens, kernel, seconds, tflops,
gelems_per_s, max_rel_err) and OUT/precision_summary.csv (per device and kernel: the best TFLOPS and the
median dequant rate: what a calibrated profile's fp8_peak_tflops, amx_int8 and dequant_gelems_per_s would hold).
Not run in this session (no GPU time); the lead runs it.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lia_model.accounting import linear_shape  # noqa: E402
from lia_model.models import get_model  # noqa: E402
from lia_model.sublayers import Sublayer  # noqa: E402
from runtime.kernels import (  # noqa: E402
    dequantize_fp8,
    dequantize_int8,
    int8pack_available,
    linear,
    linear_fp8,
    linear_int8,
    quantize_fp8_per_channel,
    quantize_int8_per_channel,
)

MODELS = ("opt-175b", "llama-3.1-70b")
SUBLAYERS = (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2)
TOKENS = (1, 16, 128, 1024)


def _time(fn, device: torch.device, reps: int) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def shapes(quick: bool, tiny: bool) -> list[tuple[str, str, int, int]]:
    """(model, sublayer, K, N) of every linear timed; ``tiny``: one 256 x 768 shape (a smoke test on a laptop)."""
    if tiny:
        return [("tiny", "qkv", 256, 768)]
    return [
        (name, sub.value, *linear_shape(get_model(name), sub))
        for name in (MODELS[:1] if quick else MODELS)
        for sub in (SUBLAYERS[:2] if quick else SUBLAYERS)
    ]


def run(out: Path, quick: bool, reps: int, tiny: bool = False) -> list[dict]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        fused_ok = int8pack_available(device)
        fp8_ok = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)
        for model_name, sub, k, n in shapes(quick, tiny):
            if True:
                g = torch.Generator(device="cpu").manual_seed(0)
                w = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16).to(device)
                q8, s8 = quantize_int8_per_channel(w)
                ref8 = dequantize_int8(q8, s8, torch.float32)
                qf, sf = quantize_fp8_per_channel(w) if fp8_ok else (None, None)
                for tokens in TOKENS[:2] if quick else TOKENS:
                    if device.type == "cpu" and tokens > 128 and not quick:
                        continue  # CPU prefill shapes take seconds each; the GPU covers them
                    x = torch.randn(tokens, k, generator=g).to(torch.bfloat16).to(device)
                    flops = 2.0 * tokens * n * k
                    kernels = {"bf16": (lambda: linear(x, w, None), x.float() @ w.float().t())}
                    kernels["int8_dequant"] = (lambda: linear_int8(x, q8, s8, None, fused=False), x.float() @ ref8.t())
                    if fused_ok:
                        kernels["int8_fused"] = (lambda: linear_int8(x, q8, s8, None, fused=True), x.float() @ ref8.t())
                    if fp8_ok:
                        kernels["fp8"] = (
                            lambda: linear_fp8(x, qf, sf, None),
                            x.float() @ dequantize_fp8(qf, sf, torch.float32).t(),
                        )
                    for name, (fn, ref) in kernels.items():
                        err = _rel_err(fn(), ref)
                        t = _time(fn, device, reps)
                        rows.append(
                            {
                                "device": device.type,
                                "model": model_name,
                                "sublayer": sub,
                                "n": n,
                                "k": k,
                                "tokens": tokens,
                                "kernel": name,
                                "seconds": t,
                                "tflops": flops / t / 1e12,
                                "gelems_per_s": "",
                                "max_rel_err": err,
                            }
                        )
                t = _time(lambda: dequantize_int8(q8, s8), device, reps)
                rows.append(
                    {
                        "device": device.type,
                        "model": model_name,
                        "sublayer": sub,
                        "n": n,
                        "k": k,
                        "tokens": 0,
                        "kernel": "dequant",
                        "seconds": t,
                        "tflops": "",
                        "gelems_per_s": n * k / t / 1e9,
                        "max_rel_err": "",
                    }
                )
                print(f"{device.type} {model_name} {sub} ({n}x{k}) done", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "precision_kernels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def summarise(rows: list[dict], out: Path) -> None:
    summary = []
    for device in sorted({r["device"] for r in rows}):
        for kernel in sorted({r["kernel"] for r in rows if r["device"] == device}):
            sel = [r for r in rows if r["device"] == device and r["kernel"] == kernel]
            if kernel == "dequant":
                value, unit = statistics.median(r["gelems_per_s"] for r in sel), "Gelem/s (median)"
            else:
                value, unit = max(r["tflops"] for r in sel), "TFLOPS (best)"
            worst = max((r["max_rel_err"] for r in sel if r["max_rel_err"] != ""), default="")
            summary.append(
                {
                    "device": device,
                    "kernel": kernel,
                    "value": value,
                    "unit": unit,
                    "worst_max_rel_err": worst,
                    "points": len(sel),
                }
            )
    with open(out / "precision_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    print(f"{'device':6} {'kernel':13} {'value':>10}  unit               worst max rel err")
    for s in summary:
        err = f"{s['worst_max_rel_err']:.2e}" if s["worst_max_rel_err"] != "" else "-"
        print(f"{s['device']:6} {s['kernel']:13} {s['value']:10.4g}  {s['unit']:18} {err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the CSVs (e.g. $OUT)")
    parser.add_argument("--quick", action="store_true", help="two shapes and two token counts")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="one 256 x 768 shape: checks the script runs")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "precision_kernels.csv").exists():
        sys.exit(f"error: {out / 'precision_kernels.csv'} exists -- give another --out (nothing is overwritten)")
    summarise(run(out, args.quick, args.reps, args.tiny), out)


if __name__ == "__main__":
    main()
