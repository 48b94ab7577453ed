"""Probe: the runtime's linears timed back to back (as the calibrator times them) and one call at a time after the
device idled, with the GPU's clock and power read beside them (issue 10: GPU prefill linears ran 0.78-0.89x their
kernel-table time in situ, the CPU's prefill fc2 0.8x).

    python tools/probe_gpu_burst.py --out DIR [--quick]

For each case (model, sublayer, rows, device) the runtime's own call (calibrate.kernel_tables._sublayer_call, over
the calibrator's weight copies) is timed

- ``sustained``: by the calibrator's timer (calibrate.timing: CUDA events or perf_counter, calls back to back);
- ``gap-<ms>``: one call at a time, the device idle ``ms`` milliseconds before each (sleep, then the call between
  its own two events, then a synchronise).

On the GPU a thread reads the SM clock, power and throttle reasons (NVML through ``nvidia-smi``) every 20 ms; each
row holds the median clock and power over its window. Writes ``gpu_burst.csv`` under DIR and prints a table with
each mode's time over the sustained one.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

GPU_CASES = [  # (model, sublayer, rows): the in-situ prefill shapes of the validation's chain-bound points
    ("opt-30b", "fc1", 2016),
    ("opt-30b", "fc2", 2016),
    ("opt-30b", "qkv", 2016),
    ("opt-30b", "out_proj", 2016),
    ("opt-30b", "fc1", 4096),
    ("opt-30b", "fc2", 4096),
    ("opt-30b", "fc2", 512),
    ("llama-2-70b", "fc1", 2048),
    ("llama-2-70b", "fc2", 2048),
    ("llama-2-70b", "qkv", 2048),
    ("opt-66b", "fc2", 4096),
]
CPU_CASES = [("llama-2-70b", "fc2", 512), ("opt-30b", "fc2", 512), ("opt-30b", "fc1", 512)]
GPU_GAPS_MS = (2.0, 10.0, 30.0)
CPU_GAPS_MS = (30.0, 200.0)
# --data: the operand data the GPU's power (and so its clock) depends on
DATA_VARIANTS = (
    "calibrator",  # x = randn * 0.1 (calibrate.kernel_tables._sublayer_call), weights uniform +-0.02 (tiled block)
    "relu-input",  # x = relu(randn): half zeros, as OPT's fc2 reads relu(fc1) in situ
    "alike-rows",  # every row of x one random row plus 1% noise (rows that barely differ)
    "runtime-weights",  # weights as the runtime fills them (uniform +-sqrt(3 / K), untiled), x as the calibrator
    "zero-weights",  # weights all zero, x as the calibrator
)

# --context: what differs between the calibrator's call and the runtime's (runtime/executor.py, runtime/weights.py)
CONTEXT_VARIANTS = (
    "calibrator",  # the calibrator's call as it is: default stream, a fresh weight tensor per copy
    "side-stream",  # on a stream of its own (the runtime's compute stream), events on it
    "inference-mode",  # under torch.inference_mode() (the executor's generate)
    "layer-view",  # weights as views into one flat layer block (the runtime's layout, runtime/weights.py)
    "runtime-all",  # the three together
)


def layer_view_params(model, sub, device: str, copies: int) -> list[dict]:
    """``copies`` parameter dicts of ``sub`` as views into flat layer blocks laid out as the runtime's weights (one
    block each: calibrate.gpu_chain.layer_blocks)."""
    from calibrate.gpu_chain import layer_blocks

    return [block[sub] for block in layer_blocks(model, copies, device)]


CHAIN_CASES = [("opt-30b", 2016), ("opt-30b", 4096), ("llama-2-70b", 2048), ("opt-66b", 4096), ("opt-30b", 512)]


def chain_rows(model_name: str, tokens: int, layers: int = 2, steps: int = 12, idle_ms: float = 0.0) -> list[dict]:
    """The four linears of a layer run as the runtime chains them on the GPU (qkv -> out_proj -> fc1 -> fc2, each
    reading the one before's output; Q stands in for attention's output), over ``layers`` layer blocks in turn,
    each sublayer between CUDA events; ``idle_ms`` of host sleep after qkv (where CPU attention would run).
    One row per sublayer: the median over ``steps`` passes (the first pass untimed)."""
    import torch

    from lia_model.models import get_model
    from lia_model.sublayers import Sublayer
    from runtime import kernels

    model = get_model(model_name)
    subs = (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2)
    blocks = [{s: layer_view_params(model, s, "cuda", 1)[0] for s in subs} for _ in range(layers)]
    rope = kernels.rope_tables(torch.arange(0, tokens), model, torch.device("cuda")) if model.uses_rope else None
    h = torch.randn(1, tokens, model.hidden_size, dtype=torch.bfloat16, device="cuda")
    times: dict[str, list[float]] = {s.value: [] for s in subs}
    with torch.inference_mode():
        for step in range(steps + 1):
            p = blocks[step % layers]
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]
            ev[0].record()
            q, _k, _v = kernels.qkv(h, p[Sublayer.QKV], model, rope)
            ev[1].record()
            if idle_ms:
                ev[1].synchronize()
                time.sleep(idle_ms / 1e3)
                ev[1] = torch.cuda.Event(enable_timing=True)
                ev[1].record()
            ctx = q[..., : model.hidden_size].contiguous() if q.shape[-1] != model.hidden_size else q
            h_mid = kernels.out_proj(ctx, p[Sublayer.OUT_PROJ], h)
            ev[2].record()
            mid = kernels.fc1(h_mid, p[Sublayer.FC1], model)
            ev[3].record()
            h_out = kernels.fc2(mid, p[Sublayer.FC2], h_mid)
            ev[4].record()
            ev[4].synchronize()
            h = torch.nn.functional.layer_norm(h_out.float(), (model.hidden_size,)).to(torch.bfloat16)
            if step:
                times["qkv"].append(ev[0].elapsed_time(ev[1]) if not idle_ms else float("nan"))
                for i, s in enumerate(subs[1:], start=1):
                    times[s.value].append(ev[i].elapsed_time(ev[i + 1]))
    del blocks
    torch.cuda.empty_cache()
    return [
        {
            "model": model_name,
            "sublayer": s,
            "tokens": tokens,
            "idle_ms": idle_ms,
            "median_ms": statistics.median(v),
            "min_ms": min(v),
            "max_ms": max(v),
            "passes": len(v),
        }
        for s, v in times.items()
    ]


def variant_call(model, sub, params: list[dict], tokens: int, device: str, variant: str):
    """The runtime's call of ``sub`` over ``params`` in turn, with operand data ``variant``."""
    import math

    import torch

    from calibrate.tensors import cycling
    from lia_model.accounting import linear_shape
    from lia_model.sublayers import Sublayer
    from runtime import kernels

    k, n = linear_shape(model, sub)
    x = torch.randn(tokens, 1, k, dtype=torch.bfloat16, device=device) * 0.1
    if variant == "relu-input":
        x = torch.relu(torch.randn(tokens, 1, k, dtype=torch.bfloat16, device=device))
    elif variant == "alike-rows":
        row = torch.randn(1, 1, k, dtype=torch.bfloat16, device=device)
        x = row + 0.01 * torch.randn(tokens, 1, k, dtype=torch.bfloat16, device=device)
    if variant == "runtime-weights":
        bound = math.sqrt(3.0 / k)
        for p in params:
            p["w"].uniform_(-bound, bound)
    elif variant == "zero-weights":
        for p in params:
            p["w"].zero_()
    resid = torch.randn(tokens, 1, n, dtype=torch.bfloat16, device=device)
    rope = kernels.rope_tables(torch.arange(7, 8), model, torch.device(device)) if model.uses_rope else None

    def one(p):
        if sub == Sublayer.QKV:
            return lambda: kernels.qkv(x, p, model, rope)
        if sub == Sublayer.OUT_PROJ:
            return lambda: kernels.out_proj(x, p, resid)
        if sub == Sublayer.FC1:
            return lambda: kernels.fc1(x, p, model)
        return lambda: kernels.fc2(x, p, resid)

    return cycling([one(p) for p in params])


class ClockLog:
    """nvidia-smi's SM clock, power and throttle reasons every 20 ms, stamped with time.monotonic()."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float, str]] = []
        query = "clocks.sm,power.draw,clocks_throttle_reasons.active"
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits", "-lms", "20"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.proc = None
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.monotonic(), float(parts[0]), float(parts[1]), parts[2]))
            except (ValueError, IndexError):
                continue

    def window(self, t0: float, t1: float) -> tuple[float, float, str]:
        got = [s for s in self.samples if t0 <= s[0] <= t1]
        if not got:
            return float("nan"), float("nan"), ""
        reasons = sorted({s[3] for s in got})
        return statistics.median(s[1] for s in got), statistics.median(s[2] for s in got), "|".join(reasons)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


def timed(call, device: str) -> tuple[float, float, float, int]:
    """Median, min and max seconds of ``call`` by the calibrator's timer (calls back to back), and the calls timed."""
    from calibrate.timing import time_cuda, time_host

    timing = time_cuda(call) if device == "cuda" else time_host(call, budget_s=1.5, min_samples=3)
    return timing.median_s, timing.min_s, timing.max_s, timing.samples * timing.calls_per_sample


def gapped(call, device: str, gap_ms: float, calls: int) -> list[float]:
    """Seconds of ``calls`` single calls, each after ``gap_ms`` of idle."""
    import torch

    out = []
    for _ in range(calls):
        if device == "cuda":
            torch.cuda.synchronize()
            time.sleep(gap_ms / 1e3)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) * 1e-3)
        else:
            time.sleep(gap_ms / 1e3)
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_burst.csv")
    parser.add_argument("--quick", action="store_true", help="fewer calls per mode (a smoke run)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU cases")
    parser.add_argument(
        "--data",
        action="store_true",
        help="instead of the idle gaps: the calibrator's timer over other operand data (DATA_VARIANTS)",
    )
    parser.add_argument(
        "--context",
        action="store_true",
        help="instead of the idle gaps: the calibrator's timer in the runtime's context (CONTEXT_VARIANTS)",
    )
    parser.add_argument(
        "--chain",
        action="store_true",
        help="the four GPU linears of a layer chained as the runtime runs them (CHAIN_CASES), then exit",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the CSV already in --out")
    args = parser.parse_args(argv)
    target = Path(args.out) / ("gpu_chain.csv" if args.chain else "gpu_burst.csv")
    if target.exists() and not args.force:
        print(f"error: --out: '{target}' exists; choose another --out, or pass --force", file=sys.stderr)
        return 2
    if args.chain:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for model_name, tokens in CHAIN_CASES:
            for idle in (0.0, 20.0):
                got = chain_rows(model_name, tokens, idle_ms=idle)
                rows += got
                print(
                    f"chain {model_name:12s} {tokens:5d} idle {idle:4.0f} ms: "
                    + ", ".join(f"{r['sublayer']} {r['median_ms']:.3f}" for r in got),
                    flush=True,
                )
        with (out_dir / "gpu_chain.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return 0

    import torch

    from calibrate.kernel_tables import _params, _sublayer_call
    from calibrate.tensors import copies_to_stream, cycling
    from lia_model.accounting import linear_shape
    from lia_model.models import get_model
    from lia_model.sublayers import Sublayer
    from runtime import cpu_setup

    setup = cpu_setup.apply()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    calls = 4 if args.quick else 12
    cases = [(m, s, t, "cuda") for m, s, t in GPU_CASES] if torch.cuda.is_available() else []
    if not args.no_cpu:
        cases += [(m, s, t, "cpu") for m, s, t in CPU_CASES]
    if not cases:
        print("error: no CUDA device and --no-cpu: nothing to probe", file=sys.stderr)
        return 2
    clocks = ClockLog() if any(c[3] == "cuda" for c in cases) else None
    rows = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for model_name, sub_name, tokens, device in cases:
            model = get_model(model_name)
            sub = Sublayer(sub_name)
            k, n = linear_shape(model, sub)
            cache = 200 << 20 if device == "cuda" else 160 << 20
            copies = copies_to_stream(2 * k * n, cache, cap=16 if device == "cuda" else 4)
            params = _params(model, sub, device, copies)
            call = cycling([_sublayer_call(model, sub, p, tokens, device) for p in params])
            if args.data:
                modes = [(v, 0.0) for v in DATA_VARIANTS]
            elif args.context:
                modes = [(v, 0.0) for v in CONTEXT_VARIANTS]
            else:
                modes = [("sustained", 0.0)] + [
                    (f"gap-{g:g}ms", g) for g in (GPU_GAPS_MS if device == "cuda" else CPU_GAPS_MS)
                ]
            base = None
            for mode, gap in modes:
                t0 = time.monotonic()
                if args.context:
                    import contextlib

                    ps = (
                        layer_view_params(model, sub, device, copies)
                        if mode in ("layer-view", "runtime-all")
                        else params
                    )
                    call = variant_call(model, sub, ps, tokens, device, "calibrator")
                    side = mode in ("side-stream", "runtime-all") and device == "cuda"
                    stream = torch.cuda.Stream() if side else None
                    with contextlib.ExitStack() as ctx:
                        if stream is not None:
                            ctx.enter_context(torch.cuda.stream(stream))
                        if mode in ("inference-mode", "runtime-all"):
                            ctx.enter_context(torch.inference_mode())
                        med, lo, hi, n_calls = timed(call, device)
                    del ps
                elif args.data:
                    call = variant_call(model, sub, params, tokens, device, mode)
                    med, lo, hi, n_calls = timed(call, device)
                elif mode == "sustained":
                    med, lo, hi, n_calls = timed(call, device)
                else:
                    got = gapped(call, device, gap, calls if device == "cuda" else max(3, calls // 3))
                    med, lo, hi, n_calls = statistics.median(got), min(got), max(got), len(got)
                t1 = time.monotonic()
                clock, power, reasons = (
                    clocks.window(t0, t1) if (clocks and device == "cuda") else (float("nan"),) * 2 + ("",)
                )
                base = base or med
                flops = 2.0 * tokens * k * n
                rows.append(
                    {
                        "model": model_name,
                        "sublayer": sub_name,
                        "k": k,
                        "n": n,
                        "tokens": tokens,
                        "device": device,
                        "mode": mode,
                        "gap_ms": gap,
                        "calls": n_calls,
                        "median_ms": med * 1e3,
                        "min_ms": lo * 1e3,
                        "max_ms": hi * 1e3,
                        "over_first": med / base,
                        "tflops": flops / med / 1e12,
                        "sm_clock_mhz": clock,
                        "power_w": power,
                        "throttle_reasons": reasons,
                        "weight_copies": copies,
                        "setup": setup.describe(),
                        "measured_at": stamp,
                    }
                )
                r = rows[-1]
                print(
                    f"{model_name:12s} {sub_name:8s} {tokens:5d} {device:4s} {mode:15s} {r['median_ms']:9.3f} ms"
                    f" x{r['over_first']:.3f} {r['tflops']:7.1f} TFLOPS clock {clock:6.0f} MHz power {power:5.0f} W"
                    f" {reasons}",
                    flush=True,
                )
            del params, call
            if device == "cuda":
                torch.cuda.empty_cache()
    finally:
        if clocks:
            clocks.close()
    path = out_dir / "gpu_burst.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
