"""Kernel tables: the runtime's own sublayer functions timed under the runtime's own CPU setup.

    python -m calibrate.kernel_tables --base PROFILE --name NAME --out DIR [--models opt-30b,...] [--quick]
        [--force] [--no-gpu]
    python -m calibrate.kernel_tables --cpu-linears-only ROWS [--gpu-linears-only TOKENS] --name NAME --out DIR
        [--models ...] [--weight-dtypes ...] [--probe-against PROFILE] [--force]
    python -m calibrate.kernel_tables --gpu-linears-chained TOKENS --name NAME --out DIR [--models ...] [--force]
    python -m calibrate.kernel_tables --refit PROFILE CSV [EARLIER_CSV ...] --force

One kernel truth: the functions timed here are ``runtime.kernels.qkv / out_proj / fc1 / fc2 / attention /
attn_score / attn_context``, imported, never re-written, called exactly as the executor calls them (norm,
bias, RoPE, residual and activation included), after ``runtime.cpu_setup.apply()`` (threads on physical
cores, affinity, allocator). The written profile is the base profile plus a ``kernels`` section
(lia_model.hardware.KernelTables) that the cost model reads instead of its roofline:

- linears: every (sublayer, K, N) of the chosen catalog models (and each stored weight dtype of
  ``--weight-dtypes``: bf16, int8, fp8_e4m3, the runtime's kernel for each), over token counts 1 .. 4096 (a per-call
  FLOP cap skips the largest products: the cost model extrapolates them in proportion to tokens), on the
  CPU (perf_counter) and the GPU (CUDA events). Weights are cycled through copies larger than 4x the
  last-level cache so that each call streams them from memory, as a layer-by-layer runtime does.
- attention: the fused kernel and the split score / context kernels, decode (q = 1) and prefill (q = s),
  on a grid of batch, heads, GQA group and context over live-prefix views of a preallocated cache; fitted
  per (device, kind, phase) as t = overhead + bytes x s_per_byte + FLOPs x s_per_flop by non-negative
  least squares (scipy), with the fit's error on its own grid recorded.
- GPU dispatch: the host time to launch one GPU sublayer of the runtime (runtime/overhead.py's executor
  slope at hidden 64, where the GPU work is negligible).
- CPU beside DMA: the runtime's fc2 of OPT-30B at 64 tokens alone and while pinned H2D copies stream
  2 GiB of host memory on another CUDA stream (the layer-prefetch pattern); the ratio is the slowdown the
  cost model charges CPU work that runs beside weight streaming; the attention case's ratio is attention's own.
- CPU wake-up: decode attention after sleeps of 0.05-2 ms against back to back (``cpu_wake``): what a CPU
  sublayer pays when it starts after the CPU waited, and after how long a wait. ``--remeasure-insitu`` measures
  the slowdowns and the wake-up alone into a copy of a profile (what a campaign does at its start).

Every measurement is a row of the raw CSV (NAME-kernels.csv) with the setup it ran under.

Extra entries: ``--cpu-linears-only ROWS`` and ``--gpu-linears-only TOKENS`` (either or both; the GPU needs CUDA)
measure only the linears of ``--models`` on that device at those counts, with the full run's code path and row
format, into OUT/NAME-kernels.csv (no profile). ``--refit`` takes such a CSV as an earlier run: a CPU entry is the
median over every run that measured it; a GPU entry the main CSV (the run that made the profile) measured keeps its
time, and one it did not (a token count the GPU grid lacks, e.g. 2048) is added, the median over the runs that did.
``--gpu-linears-chained TOKENS`` times the bf16 GPU linears as a streamed layer runs them (calibrate/gpu_chain.py);
``--refit`` puts those entries in place of the isolated ones of the same shape and token count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from lia_model.errors import LiaInputError
from lia_model.hardware import KernelTables

TOKENS = (1, 4, 16, 64, 256, 1024, 4096)
QUICK_TOKENS = (1, 16, 256)
CPU_FLOP_CAP = 2.5e12  # FLOPs per call: larger CPU products are extrapolated (~0.5 s each on AMX)
GPU_FLOP_CAP = 2.0e14
DEFAULT_MODELS = ("opt-30b", "opt-66b", "opt-175b", "llama-2-70b")
ATTN_MODELS = ("opt-30b", "llama-2-70b")  # MHA (G = 1) and GQA (G = 8); --attn-models overrides
# decode: small contexts at large batches too (the runtime's B = 64, s = 40 point measured a per-row cost
# that a grid starting at s = 128 missed: 2026-11-30, runtime/validation/wave2)
DECODE_GRID = (
    (1, 512),
    (8, 128),
    (8, 2048),
    (32, 512),
    (64, 128),
    (64, 1024),
    (16, 2048),
    (64, 32),
    (256, 32),
    (128, 64),
    # B = 1 at a short context: the runtime's CPU decode attention at B = 1, s = 33-40 (OPT-30B, L_in = 32) took
    # 0.5 ms per call in situ where the fit, extrapolated from s >= 128 at B = 1, gave 0.02 ms (the summary's
    # "CPU attention / calibrated" check at 4.3%, runtime/validation/summary.md): the kernel's fixed cost
    (1, 48),
)
# prefill: (batch, q = s). The runtime's chunked prefill runs B / minibatches sequences per call: OPT-30B at 16 x 256
# and Llama-2-70B at 4 x 512 ran 1.3x the fit of the first six points in situ (the fifteenth session,
# runtime/validation/summary.md), outside the grid's batch x heads x q rows; the last five points cover them
PREFILL_GRID = (
    (1, 32),
    (1, 512),
    (4, 128),
    (1, 1024),
    (8, 256),
    (2, 2048),
    (16, 128),
    (16, 256),
    (4, 512),
    (8, 512),
    (4, 1024),
)
QUICK_DECODE_GRID = ((1, 64), (4, 128), (2, 256), (8, 32))
QUICK_PREFILL_GRID = ((1, 16), (1, 64), (2, 32), (2, 48))
LLC_DEFAULT = 64 << 20


def log(msg: str) -> None:
    print(f"[kernels {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- operands


def _params(model, sub, device, copies: int, weight_dtype: str = "bf16") -> list[dict]:
    """Parameter dicts of one sublayer as the runtime's weight layout holds them (w [N, K], bias, norm); with a
    quantised ``weight_dtype`` (int8, fp8_e4m3) w holds one byte per value and ``w_scale`` its bf16 row scales,
    quantised by the runtime's own ``kernels.quantize_rows`` (runtime/weights.py's layout)."""
    import torch

    from calibrate.tensors import fill_varied
    from lia_model.accounting import linear_shape
    from lia_model.sublayers import Sublayer
    from runtime import kernels
    from runtime.hostmem import host_tensor

    k, n = linear_shape(model, sub)
    out = []
    for _ in range(copies):
        if device == "cpu":  # the runtime's host weight memory (runtime/hostmem.py: anonymous, huge pages advised)
            w = fill_varied(host_tensor((n, k), torch.bfloat16)).mul_(0.02)
        else:
            w = fill_varied(torch.empty(n, k, dtype=torch.bfloat16, device=device)) * 0.02
        p = {"w": w}
        if weight_dtype != "bf16":
            stored = {"int8": torch.int8, "fp8_e4m3": torch.float8_e4m3fn}[weight_dtype]
            values, scales = kernels.quantize_rows(w, stored)
            if device == "cpu":  # the quantised copy in the runtime's host memory too
                p["w"] = host_tensor((n, k), values.dtype).copy_(values)
            else:
                p["w"] = values
            p["w_scale"] = scales
            del w
        if model.linear_bias:
            p["b"] = torch.zeros(n, dtype=torch.bfloat16, device=device)
        if sub in (Sublayer.QKV, Sublayer.FC1):
            p["norm_w"] = torch.ones(k, dtype=torch.bfloat16, device=device)
            if model.linear_bias:
                p["norm_b"] = torch.zeros(k, dtype=torch.bfloat16, device=device)
        out.append(p)
    return out


def _sublayer_call(model, sub, p: dict, tokens: int, device) -> Callable[[], Any]:
    """The executor's call of sublayer ``sub`` for a decode-shaped input [tokens, 1, K] (rows = tokens)."""
    import torch

    from lia_model.accounting import linear_shape
    from lia_model.sublayers import Sublayer
    from runtime import kernels

    k, n = linear_shape(model, sub)
    x = torch.randn(tokens, 1, k, dtype=torch.bfloat16, device=device) * 0.1
    if sub == Sublayer.QKV:
        rope = kernels.rope_tables(torch.arange(7, 8), model, torch.device(device)) if model.uses_rope else None
        return lambda: kernels.qkv(x, p, model, rope)
    if sub == Sublayer.OUT_PROJ:
        resid = torch.randn(tokens, 1, n, dtype=torch.bfloat16, device=device)
        return lambda: kernels.out_proj(x, p, resid)
    if sub == Sublayer.FC1:
        return lambda: kernels.fc1(x, p, model)
    resid = torch.randn(tokens, 1, n, dtype=torch.bfloat16, device=device)
    return lambda: kernels.fc2(x, p, resid)


# ----------------------------------------------------------------------------------------- linears


# A CPU linear's memory-bound calls (up to this many rows) swing between two speeds about 2x apart in runs of
# seconds on the GPU host, whatever the thread count or page size, and its compute-bound calls through slower
# phases of tens of seconds (runtime/validation/dram-drift/; the rounds of hwprofiles/calibration/): one burst of
# samples lands in one state. So the memory-bound calls are timed in ROUNDS spread over the model's whole
# measurement (each round times every one of them once, and a share of the larger calls), and the table holds
# the median of the rounds' medians (round_estimate): the validation goals are on |error|, and the median of
# the host's states is what minimises the mean |error| over points that each run in one state. Larger calls
# are timed once.
MEMORY_BOUND_TOKENS = 256
CPU_ROUNDS = 8
GPU_CHAIN_ROUNDS = 3  # rounds of the chained GPU linears (calibrate/gpu_chain.py), interleaved over token counts


ROUND_ESTIMATE = "the median of the rounds' medians"


def round_estimate(round_medians_s: list[float]) -> float:
    """A table entry from its rounds: ROUND_ESTIMATE (see above)."""
    return float(statistics.median(round_medians_s))


def _round_robin(small: list, large: list, rounds: int) -> list[list]:
    """Round r: every small item, then the large items i with i % rounds == r (so rounds spread over time)."""
    return [list(small) + [x for i, x in enumerate(large) if i % rounds == r] for r in range(rounds)]


def linear_rows(
    models: list,
    device: str,
    tokens_list: tuple[int, ...],
    llc_bytes: int,
    budget_s: float,
    setup: str,
    seen: Optional[set[tuple]] = None,
    rounds: int = 1,
    weight_dtype: str = "bf16",
) -> list[dict]:
    """One row per (sublayer shape, tokens) of ``models`` on ``device``. ``rounds`` > 1 times the memory-bound
    calls (tokens <= MEMORY_BOUND_TOKENS) in that many rounds interleaved with the rest (``_round_robin``),
    each round under ``budget_s``; ``time_s`` is then ``round_estimate`` of the rounds' medians. ``weight_dtype``:
    the stored weights (the runtime's kernel for them: runtime/kernels.py ``project``)."""
    from calibrate.tensors import copies_to_stream, cycling
    from calibrate.timing import time_cuda, time_host
    from lia_model.accounting import linear_shape
    from lia_model.sublayers import Sublayer
    from runtime.hostmem import huge_page_fraction, vmstat_counters, vmstat_delta

    rows: list[dict] = []
    seen = set() if seen is None else seen  # shapes already measured (shared across calls: one table each)
    cap = CPU_FLOP_CAP if device == "cpu" else GPU_FLOP_CAP
    timer = time_host if device == "cpu" else time_cuda
    for model in models:
        shapes = []  # (sublayer, k, n, copies, params, huge)
        for sub in (Sublayer.QKV, Sublayer.OUT_PROJ, Sublayer.FC1, Sublayer.FC2):
            k, n = linear_shape(model, sub)
            key = (sub.value, k, n, weight_dtype)
            if key in seen:
                continue
            seen.add(key)
            value_bytes = 2 if weight_dtype == "bf16" else 1
            copies = copies_to_stream(value_bytes * k * n, llc_bytes if device == "cpu" else 200 << 20, cap=16)
            params = _params(model, sub, device, copies, weight_dtype)
            huge = huge_page_fraction([p["w"] for p in params]) if device == "cpu" else None
            shapes.append((sub, k, n, copies, params, huge))
        cases = [(i, t) for i, (_, k, n, *_r) in enumerate(shapes) for t in tokens_list if 2.0 * t * k * n <= cap]
        small = [c for c in cases if rounds > 1 and c[1] <= MEMORY_BOUND_TOKENS]
        large = [c for c in cases if c not in small]
        fns = {
            (i, t): cycling([_sublayer_call(model, shapes[i][0], p, t, device) for p in shapes[i][4]]) for i, t in cases
        }
        timings: dict[tuple[int, int], list] = {c: [] for c in cases}
        round_vmstat: list[str] = []  # the kernel's memory-management work during each round (CPU)
        for r, batch in enumerate(_round_robin(small, large, max(rounds, 1))):
            before = vmstat_counters() if device == "cpu" else {}
            for c in batch:
                timings[c].append(timer(fns[c], budget_s=budget_s, min_samples=2 if rounds > 1 else 3, warmup=r == 0))
            round_vmstat.append(vmstat_delta(before, vmstat_counters() if device == "cpu" else {}))
        for i, (sub, k, n, copies, _params_i, huge) in enumerate(shapes):
            mine = [(t, timings[(i, t)]) for t in tokens_list if (i, t) in timings]
            for t, got in mine:
                median_s = round_estimate([g.median_s for g in got])
                flops = 2.0 * t * k * n
                rows.append(
                    {
                        "family": "linear",
                        "device": device,
                        "model": model.name,
                        "sublayer": sub.value,
                        "k": k,
                        "n": n,
                        "weight_dtype": weight_dtype,
                        "tokens": t,
                        "time_s": median_s,
                        "min_s": min(g.min_s for g in got),
                        "max_s": max(g.max_s for g in got),
                        "samples": sum(g.samples for g in got),
                        "rounds": len(got),
                        "round_medians_s": " ".join(f"{g.median_s:.6g}" for g in got),
                        "model_round_vmstat": " ".join(v or "-" for v in round_vmstat),
                        "weight_copies": copies,
                        "gbps_weights": value_bytes * k * n / median_s / 1e9,
                        "tflops": flops / median_s / 1e12,
                        "weights_huge_page_fraction": huge,
                        "issue_s": statistics.median(g.issue_s for g in got) if got[0].issue_s is not None else None,
                        "setup": setup,
                    }
                )
            log(
                f"{device} {model.name} {sub.value} ({k}x{n}{'' if weight_dtype == 'bf16' else ', ' + weight_dtype}): "
                + ", ".join(f"{r['tokens']}:{r['time_s'] * 1e3:.2f}ms" for r in rows[-len(mine) :])
                + (f" (memory-bound calls: median of {rounds} rounds)" if rounds > 1 else "")
            )
        del shapes, fns
    return rows


def _row_dtype(r: dict) -> str:
    """A raw row's weight dtype (rows measured before the column: bf16)."""
    value = r.get("weight_dtype")
    return value if isinstance(value, str) and value else "bf16"


def linear_tables(rows: list[dict], device: str) -> list[dict]:
    tables: dict[tuple, dict] = {}
    for r in rows:
        if r["family"] != "linear" or r["device"] != device:
            continue
        dtype = _row_dtype(r)
        key = (r["sublayer"], int(r["k"]), int(r["n"]), dtype)  # ints also when read back from a CSV (pandas floats)
        t = tables.setdefault(
            key,
            {
                "sublayer": r["sublayer"],
                "k": key[1],
                "n": key[2],
                "model": r["model"],
                **({} if dtype == "bf16" else {"weight_dtype": dtype}),
                "tokens": [],
                "seconds": [],
            },
        )
        t["tokens"].append(int(r["tokens"]))
        t["seconds"].append(float(f"{r['time_s']:.6g}"))
    issue = gpu_issue_estimates(rows) if device == "gpu" else {}
    for key, t in tables.items():
        order = sorted(range(len(t["tokens"])), key=lambda i: t["tokens"][i])
        t["tokens"] = [t["tokens"][i] for i in order]
        t["seconds"] = [t["seconds"][i] for i in order]
        if key in issue:
            t["issue_s"] = issue[key]
    return list(tables.values())


def gpu_issue_estimates(rows: list[dict]) -> dict[tuple[str, int, int, str], float]:
    """(sublayer, K, N, weight dtype) -> the host's seconds to issue one call of the GPU linear (the ``issue_s``
    column, measured beside its CUDA-event time): the median over the shape's token counts (the same launches at
    every count). Rows from before the column hold none."""
    values: dict[tuple[str, int, int, str], list[float]] = {}
    for r in rows:
        if r.get("family") != "linear" or r.get("device") not in ("gpu", "cuda"):
            continue
        v = r.get("issue_s")
        if v is None or not math.isfinite(float(v)):
            continue
        values.setdefault((r["sublayer"], int(r["k"]), int(r["n"]), _row_dtype(r)), []).append(float(v))
    return {key: float(f"{statistics.median(vs):.4g}") for key, vs in values.items()}


# ----------------------------------------------------------------------------------------- attention


def live_prefix_caches(model, batch: int, s: int, cache_bytes: int, device: str = "cpu") -> tuple[list, int]:
    """K/V caches of ``s`` live positions as the executor passes them: prefix views of a preallocated cache a little
    wider than s, in enough copies to cycle that together they exceed 4x ``cache_bytes``; and the K/V bytes one call
    reads. (The attention grid's and runtime/probe_gqa_decode.py's caches.)"""
    import torch

    from calibrate.tensors import copies_to_stream

    kvh, d = model.num_kv_heads, model.head_dim
    kv_bytes = 2 * batch * kvh * s * d * 2
    copies = copies_to_stream(kv_bytes, cache_bytes, cap=64)
    kc = torch.randn(batch, kvh, s + 16, d, dtype=torch.bfloat16, device=device)
    vc = torch.randn(batch, kvh, s + 16, d, dtype=torch.bfloat16, device=device)
    return [(kc.clone()[:, :, :s], vc.clone()[:, :, :s]) for _ in range(copies)], kv_bytes


def attention_rows(
    models: list,
    device: str,
    quick: bool,
    budget_s: float,
    setup: str,
    cache_bytes: int = LLC_DEFAULT,
    grids: Optional[tuple[tuple[str, tuple[tuple[int, int], ...]], ...]] = None,
) -> list[dict]:
    """Fused and split attention over live-prefix views of a preallocated cache, as the executor calls them.

    Each call reads the next of several caches that together exceed 4x ``cache_bytes`` (the CPU's LLC; 200 MB
    on the GPU), as the linears cycle their weights: in the runtime every layer reads its own cache, last
    written by the copy engine or by other layers' kernels. One cache read back to back stays in the LLC and
    ran 1.5-2.3x faster than the same kernel over cold caches on the GPU host (runtime/probe_cpu_insitu.py,
    runtime/validation/cpu-insitu-probe/); the tables before the ninth session measured that way and put
    in-situ CPU attention at 4.7-86% of its table."""
    import torch

    from calibrate.tensors import cycling
    from calibrate.timing import time_cuda, time_host
    from runtime import kernels

    timer = time_host if device == "cpu" else time_cuda
    rows = []
    grids = grids or (  # (phase, ((batch, s), ...)) pairs; the calibrator's grids by default
        ("decode", QUICK_DECODE_GRID if quick else DECODE_GRID),
        ("prefill", QUICK_PREFILL_GRID if quick else PREFILL_GRID),
    )
    for model in models:
        kvh, d, heads = model.num_kv_heads, model.head_dim, model.num_heads
        g = heads // kvh
        for phase, grid in grids:
            for batch, s in grid:
                q = 1 if phase == "decode" else s
                pos0 = s - q
                caches, _ = live_prefix_caches(model, batch, s, cache_bytes if device == "cpu" else 200 << 20, device)
                q_in = torch.randn(batch, q, model.q_dim, dtype=torch.bfloat16, device=device)
                mask = kernels.attention_mask(q, g, pos0, s, s, torch.device(device)) if q > 1 else None
                scores = kernels.attn_score(q_in, caches[0][0], model, mask)
                calls = {
                    "fused": [lambda kp=kp, vp=vp: kernels.attention(q_in, kp, vp, model, pos0) for kp, vp in caches],
                    "score": [lambda kp=kp: kernels.attn_score(q_in, kp, model, mask) for kp, _ in caches],
                    "context": [lambda vp=vp, sc=scores: kernels.attn_context(sc, vp, model, q) for _, vp in caches],
                }
                for kind, fns in calls.items():
                    timing = timer(cycling(fns), budget_s=budget_s)
                    rows.append(
                        {
                            "family": "attention",
                            "device": device,
                            "model": model.name,
                            "kind": kind,
                            "phase": phase,
                            "batch": batch,
                            "heads": heads,
                            "kv_heads": kvh,
                            "group": g,
                            "q": q,
                            "s": s,
                            "head_dim": d,
                            "time_s": timing.median_s,
                            "min_s": timing.min_s,
                            "max_s": timing.max_s,
                            "samples": timing.samples,
                            "cache_copies": len(caches),
                            "setup": setup,
                            "gqa_decode": kernels.gqa_decode_variant(),
                        }
                    )
                del caches, scores
        log(f"{device} attention {model.name}: {sum(1 for r in rows if r['model'] == model.name)} points")
    return rows


def fit_attention(rows: list[dict], device: str, models: dict) -> list[dict]:
    """Per (kind, phase): t = overhead + s_per_byte x bytes + s_per_flop x FLOPs + s_per_row x rows by NNLS on
    relative error (each row weighted by 1 / its time, so small and large points count alike); bytes,
    FLOPs and rows from lia_model.accounting, the cost model's own counts."""
    import itertools

    from scipy.optimize import nnls

    from lia_model.accounting import attention_bytes_flops, attention_rows

    fits = []
    variants = sorted({row_gqa_decode(r) or "" for r in rows if r["family"] == "attention" and r["device"] == device})
    blocks = itertools.product(("fused", "score", "context"), ("decode", "prefill"), ("mha", "gqa"), variants)
    for kind, phase, heads, variant in blocks:
        if True:  # noqa: SIM108 - one block per (kind, phase, heads, GQA decode kernel)
            pts = [
                r
                for r in rows
                if r["family"] == "attention"
                and r["device"] == device
                and r["kind"] == kind
                and r["phase"] == phase
                and (int(r["group"]) > 1) == (heads == "gqa")
                and (row_gqa_decode(r) or "") == variant
            ]
            if len(pts) < 4:
                continue
            feats = []
            for r in pts:
                model = models[r["model"]]
                b, q, s = int(r["batch"]), int(r["q"]), int(r["s"])
                nbytes, flops = attention_bytes_flops(model, b, q, s, kind)
                feats.append([1.0, float(nbytes), float(flops), attention_rows(model, b, q)])
            x = np.asarray(feats)
            t = np.asarray([float(r["time_s"]) for r in pts])
            a = x / t[:, None]
            scale = a.max(axis=0)
            scale[scale == 0] = 1.0
            coef, _ = nnls(a / scale, np.ones(len(pts)))
            coef = coef / scale
            pred = x @ coef
            errs = np.abs(pred / t - 1)
            for r, p in zip(pts, pred):
                r["fit_time_s"] = float(p)
            fits.append(
                {
                    "kind": kind,
                    "phase": phase,
                    "heads": heads,
                    "overhead_s": float(f"{coef[0]:.6g}"),
                    "s_per_byte": float(f"{coef[1]:.6g}"),
                    "s_per_flop": float(f"{coef[2]:.6g}"),
                    "s_per_row": float(f"{coef[3]:.6g}"),
                    "fit_median_rel_err": round(float(np.median(errs)), 4),
                    "fit_max_rel_err": round(float(errs.max()), 4),
                    "points": len(pts),
                    **({"gqa_decode": variant} if variant else {}),
                }
            )
    return fits


def cpu_prefill_grid(rows: list[dict], runs: Optional[list[dict]] = None) -> list[dict]:
    """The CPU prefill attention grid as profile entries (``KernelTables.cpu_attention_grid``), one per measured
    point in ``rows`` (each row's ``time_s``: with ``runs``, the median over those runs, whose count per point is
    kept); the cost model interpolates in it (lia_model/attention_grid.py)."""
    out = []
    for r in rows:
        if not (r.get("family") == "attention" and r.get("device") == "cpu" and r.get("phase") == "prefill"):
            continue
        key = attention_point(r)
        count = len(distinct_values(run[key] for run in runs if key in run)) if runs else 1
        out.append(
            {
                "kind": r["kind"],
                "batch": int(float(r["batch"])),
                "heads": int(float(r["heads"])),
                "kv_heads": int(float(r["kv_heads"])),
                "s": int(float(r["s"])),
                "head_dim": int(float(r["head_dim"])),
                "seconds": float(f"{float(r['time_s']):.6g}"),
                "runs": max(1, count),
            }
        )
    return sorted(out, key=lambda e: (e["kind"], e["heads"], e["kv_heads"], e["s"], e["batch"]))


def row_gqa_decode(row: dict) -> Optional[str]:
    """The CPU GQA decode kernel a CPU fused decode attention row of a GQA model ran (runtime.kernels
    gqa_decode_variant: its ``gqa_decode`` column; rows from before that column ran the grouped pair); None for
    every other row (one kernel only)."""
    if not (
        row.get("family") == "attention"
        and row.get("device") == "cpu"
        and row.get("kind") == "fused"
        and row.get("phase") == "decode"
        and int(float(row.get("group", 1))) > 1
    ):
        return None
    value = row.get("gqa_decode")
    return value if isinstance(value, str) and value else "grouped"


def cpu_linear_estimates(rows: list[dict]) -> dict[tuple[str, int, int, int, str], float]:
    """(sublayer, K, N, tokens, weight dtype) -> table seconds of one run's raw CPU linear rows: ``round_estimate`` of the
    rounds where the row was timed in rounds (a ``round_medians_s`` column), else its ``time_s``."""
    out = {}
    for r in rows:
        if r.get("family") != "linear" or r.get("device") != "cpu":
            continue
        rounds = r.get("round_medians_s")
        seconds = round_estimate([float(v) for v in rounds.split()]) if isinstance(rounds, str) else float(r["time_s"])
        out[(r["sublayer"], int(r["k"]), int(r["n"]), int(r["tokens"]), _row_dtype(r))] = seconds
    return out


def _row_tokens(r: dict) -> Optional[int]:
    """A GPU linear row's token count (None for other rows: they carry no issue time)."""
    return int(r["tokens"]) if r.get("family") == "linear" and r.get("device") in ("gpu", "cuda") else None


def gpu_linear_estimates(rows: list[dict], chained: bool = False) -> dict[tuple[str, int, int, int, str], float]:
    """(sublayer, K, N, tokens, weight dtype) -> table seconds of one run's raw GPU linear rows (device "gpu", or
    "cuda" in a partial CSV): the row's ``time_s``, as ``linear_tables`` reads it (GPU linears are timed in one
    round, so ``time_s`` is already that round's median). ``chained``: the rows timed chained (calibrate/gpu_chain.py)
    only; otherwise the rows timed alone only."""
    from calibrate.gpu_chain import is_chained

    return {
        (r["sublayer"], int(r["k"]), int(r["n"]), int(r["tokens"]), _row_dtype(r)): float(r["time_s"])
        for r in rows
        if r.get("family") == "linear" and r.get("device") in ("gpu", "cuda") and is_chained(r) == chained
    }


ATTENTION_POINT = ("model", "kind", "phase", "batch", "heads", "kv_heads", "group", "q", "s")


def attention_point(row: dict) -> tuple[str, ...]:
    """An attention grid row's point: its ATTENTION_POINT fields, as text (numbers as floats: a CSV whose column
    holds blanks reads 1.0 where one without reads 1)."""
    return tuple(str(row[c]) if c in ("model", "kind", "phase") else str(float(row[c])) for c in ATTENTION_POINT) + (
        row_gqa_decode(row) or "",
    )


def cpu_attention_times(rows: list[dict]) -> dict[tuple, float]:
    """(model, kind, phase, batch, heads, kv_heads, group, q, s) -> seconds of one run's CPU attention grid."""
    return {
        attention_point(r): float(r["time_s"])
        for r in rows
        if r.get("family") == "attention" and r.get("device") == "cpu"
    }


def median_over_runs(runs: list[dict], key) -> float:
    """The median of ``key``'s entries over the runs that hold it, each distinct value once: values within
    SAME_MEASUREMENT_REL of each other in two raw CSVs are one measurement that --resume-from copied into a later
    run's CSV (the copy may lose the last digits of its float text)."""
    return float(statistics.median(distinct_values(run[key] for run in runs if key in run)))


SAME_MEASUREMENT_REL = 1e-9


def distinct_values(values) -> list[float]:
    """The values, sorted, with any within SAME_MEASUREMENT_REL (relative) of the one kept before dropped."""
    out: list[float] = []
    for v in sorted(float(x) for x in values):
        if not out or abs(v - out[-1]) > SAME_MEASUREMENT_REL * abs(out[-1]):
            out.append(v)
    return out


def refit(profile: str, csv: str, force: bool, earlier: tuple[str, ...] = ()) -> Path:
    """Refit the attention models of a kernel-table profile from its raw CSV (no measurement), and set its
    CPU linear table from ``cpu_linear_estimates`` (rounds re-estimated with ``round_estimate``). ``earlier``:
    raw CSVs of other calibration runs of the same kernels on the same host (same CPU setup); each CPU linear
    entry and each CPU attention grid point the fit uses is then the median over the runs that measured it
    (one run catches the host in one state: see MEMORY_BOUND_TOKENS and runtime/validation/dram-drift/).

    GPU linear tables: the entries keep the profile's times (those of the run that made the profile, whose raw CSV
    is ``csv``: the earlier runs measured the same token counts again, and their medians would move them), except
    an entry ``csv`` did not measure and an earlier run did (``gpu_linear_estimates``: a ``--gpu-linears-only`` run of
    extra token counts): it is added (or, added by an earlier refit, set anew) as the median over the earlier runs
    that measured it, in its table (``with_gpu_entries``: a new table for a shape the profile lacks); each table's
    ``issue_s`` is the median over every run as before. Without such entries the GPU tables are left as they are.
    Entries timed chained (``--gpu-linears-chained``, calibrate/gpu_chain.py: as a streamed layer runs them) at
    MEMORY_BOUND_TOKENS tokens or more in any of the runs are then set, each the median over the runs that timed it
    so, in place of the isolated timing (fewer tokens: the isolated timing, which includes the host's issue time)."""
    import pandas as pd
    import yaml

    from lia_model.inputs import resolve_model
    from lia_model.profiles import load_system

    path = Path(profile)
    for given in (profile, csv, *earlier):
        if not Path(given).is_file():
            raise LiaInputError(
                "--refit", f"'{given}' is not a file", "give the profile, its raw CSV and earlier raw CSVs"
            )
    if not force:
        raise LiaInputError("--refit", f"refitting rewrites '{profile}'", "pass --force to rewrite it")
    rows = [  # a finished run's CSV names the GPU "gpu", a partial one (a stopped run) "cuda"
        {**r, "device": "gpu" if r.get("device") == "cuda" else r.get("device")}
        for r in pd.read_csv(csv, low_memory=False).to_dict("records")
    ]
    if drifted(rows):
        raise LiaInputError(
            "--refit",
            f"'{csv}' was measured while the host probe read its CPU more than {_drift_pct()} off its tables",
            "measure again with the host steady (runtime.host_state --wait-s), or give a steady run first",
        )
    names = sorted({r["model"] for r in rows if r.get("family") == "attention"})
    models = {n: resolve_model(n) for n in names}
    text = path.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    setup = data["kernels"].get("setup")
    runs = [cpu_linear_estimates(rows)]
    attention_runs = [cpu_attention_times(rows)]
    issue_runs = [gpu_issue_estimates(rows)]
    gpu_runs = [gpu_linear_estimates(rows)]
    chained_runs = [gpu_linear_estimates(rows, chained=True)]
    main_gpu_tokens = {key[3] for key in gpu_runs[0]}  # the token counts of the run that made the profile
    every_row = list(rows)  # every run's rows: where an entry's model is found
    left_out: list[str] = []
    used = [csv]
    for other in earlier:
        theirs = pd.read_csv(other, low_memory=False).to_dict("records")
        if drifted(theirs):  # the rule that flags validation points (runtime/host_state.py)
            log(f"left out {Path(other).name}: the host probe read its CPU more than {_drift_pct()} off its tables")
            left_out.append(Path(other).name)
            continue
        setups = {
            r.get("setup") for r in theirs if r.get("family") in ("linear", "attention") and r.get("device") == "cpu"
        }
        kind = "CPU"
        if not setups:  # a --gpu-linears-only run: the CPU setup its GPU rows were measured under
            kind = "GPU"
            setups = {
                r.get("setup") for r in theirs if r.get("family") == "linear" and r.get("device") in ("gpu", "cuda")
            }
        if setups != {setup}:
            raise LiaInputError(
                "--refit",
                f"'{other}' measured its {kind} kernels under {sorted(map(str, setups))}, not this profile's setup "
                f"'{setup}'",
                "combine only runs of the same CPU setup",
            )
        runs.append(cpu_linear_estimates(theirs))
        used.append(other)
        every_row += theirs
        attention_runs.append(cpu_attention_times(theirs))
        # the issue time at the profile's token counts only: at extra ones (e.g. 512 and 2048, a --gpu-linears-only
        # run) the calls are large and the host issued them behind a busy GPU (0.19-0.30 ms against the 0.1 ms median
        # of a full run's counts for OPT-30B's qkv)
        issue_runs.append(
            gpu_issue_estimates([r for r in theirs if not main_gpu_tokens or _row_tokens(r) in main_gpu_tokens])
        )
        gpu_runs.append(gpu_linear_estimates(theirs))
        chained_runs.append(gpu_linear_estimates(theirs, chained=True))
    # the CPU attention grid the fit sees: every point any run measured (a run of a wider grid adds points), each
    # the median over the runs that measured it (the GPU's grid: this run's)
    cpu_attention_points: dict[tuple, dict] = {}
    for r in every_row:
        if r.get("family") == "attention" and r.get("device") == "cpu":
            cpu_attention_points.setdefault(attention_point(r), r)
    cpu_attention_rows = [
        {**r, "time_s": median_over_runs(attention_runs, key)} for key, r in cpu_attention_points.items()
    ]
    attention_count = max(
        (len(distinct_values(run[key] for run in attention_runs if key in run)) for key in attention_runs[0]), default=0
    )
    for dev, fits in (
        ("cpu", fit_attention(cpu_attention_rows, "cpu", models)),
        ("gpu", fit_attention(rows, "gpu", models)),
    ):
        if data["kernels"].get(f"{dev}_attention") and not fits:
            raise LiaInputError(
                "--refit",
                f"'{csv}' holds no {dev.upper()} attention grid, which this profile's {dev}_attention was fitted on",
                "give the raw CSV of a run that measured (or resumed) the attention grids",
            )
        data["kernels"][f"{dev}_attention"] = fits
    data["kernels"]["cpu_attention_grid"] = cpu_prefill_grid(cpu_attention_rows, attention_runs)
    data["kernels"]["source"]["cpu_attention_grid"] = (
        f"{time.strftime('%Y-%m-%d', time.gmtime())} by python -m calibrate.kernel_tables --refit: every CPU prefill "
        f"attention grid point any of the {len(attention_runs)} runs measured, each the median over the distinct runs "
        "that measured it (runs: per point)"
    )
    # the GPU linears: the tables' times stay those of the run that made the profile; entries that run did not
    # measure and an earlier one did (--gpu-linears-only TOKENS) are added, each the median over those runs
    added = (
        {
            key: median_over_runs(gpu_runs[1:], key)
            for key in dict.fromkeys(key for run in gpu_runs[1:] for key in run)
            if key not in gpu_runs[0]
        }
        if gpu_runs[0]  # a main CSV without GPU linears: its profile's tables are left as they are
        else {}
    )
    # the GPU linears timed as the runtime runs them (calibrate/gpu_chain.py: a layer's linears chained) replace the
    # isolated timings of the same (shape, tokens), each the median over the runs that timed it chained
    # at compute-bound token counts only (>= MEMORY_BOUND_TOKENS, where the GPU's busy state sets its clock): a call
    # of fewer tokens lasts as long as the host takes to issue it when the GPU waits on the launching thread, which
    # the isolated timing (calls back to back) includes and the chain (kernels queued behind the weight copy) does not
    chained = {
        key: median_over_runs(chained_runs, key)
        for key in dict.fromkeys(key for run in chained_runs for key in run)
        if key[3] >= MEMORY_BOUND_TOKENS
    }
    if added or chained:  # one rebuild of the tables; a chained entry wins over an added one of the same key
        data["kernels"]["gpu_linear"] = with_gpu_entries(data["kernels"]["gpu_linear"], {**added, **chained}, every_row)
    # the GPU linears' issue time (kept beside their event time since the sixteenth session): each table's the
    # median over the runs that measured it, at the profile's run's token counts (above)
    issue_keys = {key for run in issue_runs for key in run}
    for t in data["kernels"]["gpu_linear"]:
        key = (t["sublayer"], int(t["k"]), int(t["n"]), t.get("weight_dtype", "bf16"))
        if key in issue_keys:
            t["issue_s"] = float(f"{median_over_runs(issue_runs, key):.4g}")
    head, _, issue_note = data["kernels"]["source"]["gpu_linear"].partition("; issue_s ")
    if added:  # a refit replaces an earlier one's note (entries no run adds now stay as the profile holds them)
        adders = [Path(c).name for c, run in zip(used[1:], gpu_runs[1:]) if any(key in run for key in added)]
        head = head.split("; entries added ")[0] + (
            f"; entries added {time.strftime('%Y-%m-%d', time.gmtime())} by python -m calibrate.kernel_tables --refit "
            f"at token counts the run that made the profile did not measure "
            f"({', '.join(map(str, sorted({key[3] for key in added})))}; {len(added)} entries), each the median over "
            f"the runs that measured it ({', '.join(adders)}); the other entries unchanged"
        )
    if issue_keys:
        issue_count = sum(1 for run in issue_runs if run)
        issue_note = (
            f"(the host's time to issue one call) the median over {issue_count} calibration run(s), "
            f"set {time.strftime('%Y-%m-%d', time.gmtime())} by python -m calibrate.kernel_tables --refit"
        )
    if chained:  # a refit replaces an earlier one's note
        chainers = [Path(c).name for c, run in zip(used, chained_runs) if run]
        head = head.split("; chained entries ")[0] + (
            f"; chained entries set {time.strftime('%Y-%m-%d', time.gmtime())} by python -m calibrate.kernel_tables "
            f"--refit: {len(chained)} bf16 entries at {MEMORY_BOUND_TOKENS} tokens and more (token counts "
            f"{', '.join(map(str, sorted({key[3] for key in chained})))}) timed as the runtime runs them, a layer's "
            f"linears chained (calibrate/gpu_chain.py), each the median over the runs that timed it so "
            f"({', '.join(chainers)}), in place of the isolated timings"
        )
    data["kernels"]["source"]["gpu_linear"] = head + (f"; issue_s {issue_note}" if issue_note else "")
    # the CPU GQA decode kernel the profile predicts: the one the runtime runs now (LIA_GQA_DECODE)
    from runtime.kernels import gqa_decode_variant

    variant = gqa_decode_variant()
    measured = KernelTables.model_validate(data["kernels"]).gqa_decode_kernels()
    if measured and variant not in measured:
        raise LiaInputError(
            "--refit",
            f"no run measured the CPU GQA decode attention with the runtime's kernel '{variant}' "
            f"(measured: {', '.join(sorted(measured))})",
            "measure the CPU attention grid with it (kernel_tables --resume-from a raw CSV measures it again), "
            "or refit for the other kernel with LIA_GQA_DECODE set to it",
        )
    data["kernels"]["gqa_decode"] = variant
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for dev in ("cpu", "gpu"):
        data["kernels"]["source"][f"{dev}_attention"] = data["kernels"]["source"][f"{dev}_attention"].split(
            "; refitted "
        )[0] + (  # a refit replaces an earlier one's note
            f"; refitted {stamp} from {Path(csv).name} by python -m calibrate.kernel_tables --refit (per-row term)"
            + (
                f"; each grid point the median over {attention_count} distinct calibration runs"
                if dev == "cpu" and attention_count > 1
                else ""
            )
        )
    cpu_rows = [
        {
            "family": "linear",
            "device": "cpu",
            "sublayer": sub,
            "k": k,
            "n": n,
            "tokens": t,
            "weight_dtype": dtype,
            "model": model,
            "time_s": sec,
        }
        for (sub, k, n, t, dtype), sec, model in (
            # every entry any run measured (a run of extra row counts, --cpu-linears-only, adds entries)
            (key, median_over_runs(runs, key), _model_of(every_row, key))
            for key in dict.fromkeys(key for run in runs for key in run)
        )
    ]
    data["kernels"]["cpu_linear"] = linear_tables(cpu_rows, "cpu")
    dma = dma_slowdown(every_row)  # every run's beside-DMA pairs
    if dma is not None:
        data["kernels"]["dma_slowdown_beside_cpu"] = round(dma[0], 4)
        data["kernels"]["source"]["dma_slowdown_beside_cpu"] = _dma_source(
            stamp,
            dma[1],
            f"pooled over {', '.join(Path(c).name for c in used)} by python -m calibrate.kernel_tables --refit",
        )
    cpu_used = [c for i, c in enumerate(used) if runs[i] or i == 0]  # a --gpu-linears-only run has no CPU entries
    measured = data["kernels"]["source"]["cpu_linear"].split("; re-estimated ")[
        0
    ]  # a refit replaces an earlier one's note
    data["kernels"]["source"]["cpu_linear"] = measured + (
        f"; re-estimated {stamp} by python -m calibrate.kernel_tables --refit: entries timed in rounds hold "
        f"{ROUND_ESTIMATE}"
        + (
            f"; each entry the median over the runs that measured it, of {len(cpu_used)} calibration runs "
            f"({', '.join(Path(c).name for c in cpu_used)})"
            if len(cpu_used) > 1
            else ""
        )
        + (
            f"; left out (host probe more than {_drift_pct()} off its tables around the run): {', '.join(left_out)}"
            if left_out
            else ""
        )
    )
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    load_system(str(path))
    for dev in ("cpu", "gpu"):
        for f in data["kernels"][f"{dev}_attention"]:
            log(
                f"{dev} attention fit {f['kind']}/{f['phase']}/{f['heads']}: median |err| {100 * f['fit_median_rel_err']:.1f}%, "
                f"max {100 * f['fit_max_rel_err']:.1f}% over {f['points']} points"
            )
    return path


def with_gpu_entries(
    tables: list[dict], added: dict[tuple[str, int, int, int, str], float], rows: list[dict]
) -> list[dict]:
    """The GPU linear tables ``tables`` with the entries ``added`` ((sublayer, K, N, tokens, weight dtype) ->
    seconds) set in them, rebuilt by ``linear_tables``: every other entry as ``tables`` hold it; each table keeps
    its other fields (model, issue_s, ...) and its place; a shape no table holds becomes a new table at the end,
    its model the first of ``rows`` (every run's raw rows) with that GPU linear shape."""
    entries: dict[tuple[str, int, int, int, str], tuple[str, float]] = {}
    for t in tables:
        dtype = t.get("weight_dtype", "bf16")
        for tokens, seconds in zip(t["tokens"], t["seconds"]):
            entries[(t["sublayer"], int(t["k"]), int(t["n"]), int(tokens), dtype)] = (t["model"], float(seconds))
    for key, seconds in added.items():
        model = entries[key][0] if key in entries else _model_of(rows, key, ("gpu", "cuda"))
        entries[key] = (model, seconds)
    rebuilt = linear_tables(
        [
            {
                "family": "linear",
                "device": "gpu",
                "sublayer": sub,
                "k": k,
                "n": n,
                "tokens": tokens,
                "weight_dtype": dtype,
                "model": model,
                "time_s": seconds,
            }
            for (sub, k, n, tokens, dtype), (model, seconds) in entries.items()
        ],
        "gpu",
    )
    old = {(t["sublayer"], int(t["k"]), int(t["n"]), t.get("weight_dtype", "bf16")): t for t in tables}
    out = []
    for t in rebuilt:
        before = old.get((t["sublayer"], t["k"], t["n"], t.get("weight_dtype", "bf16")))
        out.append(t if before is None else {**before, "tokens": t["tokens"], "seconds": t["seconds"]})
    return out


def _model_of(rows: list[dict], key: tuple[str, int, int, int, str], devices: tuple[str, ...] = ("cpu",)) -> str:
    sub, k, n, _, _ = key
    return next(
        r["model"]
        for r in rows
        if r.get("family") == "linear"
        and r.get("device") in devices
        and (r["sublayer"], int(r["k"]), int(r["n"])) == (sub, k, n)
    )


def dma_slowdown(rows: list[dict]) -> Optional[tuple[float, int]]:
    """(d, pairs): the weight DMA's slowdown beside CPU work from ``cpu_beside_dma`` rows, the median over the
    alternating pairs (each distinct measurement once) of the feeder's H2D rate alone over its rate beside the CPU
    case (the kernels' ``dma_slowdown_beside_cpu``, at least 1); None without such rows."""
    ratios = [
        float(r["dma_solo_gbps"]) / float(r["dma_gbps"])
        for r in rows
        if r.get("family") == "cpu_beside_dma"
        and all(_finite_positive(r.get(c)) for c in ("dma_solo_gbps", "dma_gbps"))
    ]
    if not ratios:
        return None
    distinct = distinct_values(ratios)
    return max(1.0, float(statistics.median(distinct))), len(distinct)


def _finite_positive(value) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return v > 0 and v == v and v != float("inf")


def _dma_source(stamp: str, pairs: int, how: str) -> str:
    return (
        f"{stamp}: median over {pairs} alternating pairs of the beside-DMA probe (cpu_beside_dma rows: OPT-30B linears "
        f"and decode attention) of the feeder's pinned H2D rate alone over its rate beside the CPU case; {how}"
    )


def remeasure_beside_dma(profile: str, out_dir: Path, force: bool, insitu: bool = False) -> Path:
    """Copy a kernel-table profile to OUT/<same name> with only its CPU-beside-DMA slowdown measured again
    (the runtime's weight feeder changed; its kernels did not). ``insitu``: also attention's own slowdown beside
    the DMA and the CPU wake-up after a wait (``cpu_wake``): what a campaign re-measures at its start, since
    these move between days on the host. Needs CUDA."""
    import torch
    import yaml

    from calibrate.host import host_info
    from lia_model.profiles import load_system
    from runtime import cpu_setup

    path = Path(profile)
    flag = "--remeasure-insitu" if insitu else "--remeasure-beside-dma"
    if not path.exists():
        raise LiaInputError(flag, f"'{profile}' does not exist", "give a kernel-table profile path")
    if not torch.cuda.is_available():
        raise LiaInputError(flag, "no CUDA device", "run it on the GPU host")
    target = out_dir / path.name
    if target.exists() and not force:
        raise LiaInputError("--out", f"'{target}' exists", "choose another --out, or pass --force")
    text = path.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    if "kernels" not in data:
        raise LiaInputError(flag, f"'{profile}' has no kernels section", "give a kernel-table profile")
    setup = cpu_setup.apply()
    desc = setup.describe()
    host = host_info()
    old = data["kernels"].get("cpu_slowdown_beside_dma")
    slowdown, attn_slowdown, rows = cpu_beside_dma(desc, False)
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = f"calibrated on {host.hostname} on {date}"
    data["kernels"]["cpu_slowdown_beside_dma"] = round(max(1.0, slowdown), 4)
    data["kernels"]["source"]["cpu_slowdown_beside_dma"] = (
        f"{stamp}: runtime fc2 of OPT-30B at 64 tokens (6 cold weight copies), {beside_dma_method(False)}; "
        f"re-measured alone by python -m calibrate.kernel_tables {flag} (was {old})"
    )
    dma = dma_slowdown(rows)
    if dma is not None:
        data["kernels"]["dma_slowdown_beside_cpu"] = round(dma[0], 4)
        data["kernels"]["source"]["dma_slowdown_beside_cpu"] = _dma_source(
            stamp, dma[1], f"re-measured by python -m calibrate.kernel_tables {flag}"
        )
    if insitu:
        fields, sources = _insitu_fields(desc, False, stamp, attn_slowdown, rows, flag)
        data["kernels"].update(fields)
        data["kernels"]["source"].update(sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))
    import pandas as pd

    pd.DataFrame(rows).to_csv(out_dir / f"{path.stem}-{'insitu' if insitu else 'beside-dma'}.csv", index=False)
    load_system(str(target))
    for r in rows:
        if r["family"] != "cpu_beside_dma":
            continue
        log(
            f"cpu beside dma: {r['sublayer']} x{r['tokens']}{'/' + str(r['context']) if r['context'] else ''} "
            f"{1e3 * r['time_s']:.2f} ms vs {1e3 * r['solo_time_s']:.2f} ms alone (x{r['slowdown']:.3f}; CPU reads "
            f"{r['cpu_read_gbps_beside']:.0f} vs {r['cpu_read_gbps_solo']:.0f} GB/s); DMA {r['dma_gbps']:.1f} GB/s "
            f"vs {r['dma_solo_gbps']:.1f} alone"
        )
    log(f"slowdown {slowdown:.4f} (was {old}); wrote {target}")
    if insitu:
        k = data["kernels"]
        log(
            f"attention slowdown {k.get('cpu_attention_slowdown_beside_dma')}; wake-up {k['cpu_wake_us']} us after "
            f"waits over {k['cpu_idle_before_wake_us']} us"
        )
    return target


# ----------------------------------------------------------------------------------------- CPU wake-up

# (model, batch, s): decode attention shapes whose calls in the runtime follow a wait for a copy (the shapes of
# runtime/validation/cpu-insitu-probe/, MHA and GQA)
WAKE_CASES = (("opt-30b", 1, 288), ("opt-30b", 4, 520), ("opt-30b", 64, 40), ("llama-2-70b", 1, 1030))
QUICK_WAKE_CASES = (("opt-30b", 1, 64),)
WAKE_GAPS_MS = (0.05, 0.2, 0.5, 2.0)


def wake_and_idle(extra_s_by_gap_ms: dict[float, float]) -> tuple[float, float]:
    """(wake s, idle ms) from the median extra time after each gap (see ``cpu_wake``):
    wake = max(0, extra at the longest gap); idle = the longest gap g with every gap <= g below wake / 2."""
    gaps = sorted(extra_s_by_gap_ms)
    wake = max(0.0, extra_s_by_gap_ms[gaps[-1]])
    idle = 0.0
    for g in gaps:
        if wake <= 0 or extra_s_by_gap_ms[g] >= wake / 2:
            break
        idle = g
    return wake, idle


def cpu_wake(setup: str, quick: bool) -> tuple[float, float, list[dict]]:
    """The wake-up a CPU call pays after the CPU waited, and after how long a wait. Per case, decode attention
    (``runtime.kernels.attention`` over cold cache copies, as runtime.probe_cpu_insitu) back to back, then after
    sleeping each gap: extra(gap) = median after the gap - median back to back.

        wake = max(0, median over cases of extra(longest gap))
        idle = the longest gap g such that every gap <= g has median extra < wake / 2 (0 when the first has not)

    Returns (wake_us, idle_us, rows)."""
    from runtime.probe_cpu_insitu import attention_case, timed_calls

    calls = 8 if quick else 40
    rows: list[dict] = []
    for name, batch, s in QUICK_WAKE_CASES if quick else WAKE_CASES:
        call, copies, _ = attention_case(name, "decode", batch, s, n=4 if quick else None)
        n = len(copies)
        timed_calls(call, copies, min(n, 8), 0.0, "none")  # first touch of every copy, untimed
        back_to_back = statistics.median(timed_calls(call, copies, calls, 0.0, "none"))
        for gap_ms in WAKE_GAPS_MS:
            after = statistics.median(timed_calls(call, copies, calls, gap_ms / 1e3, "sleep"))
            rows.append(
                {
                    "family": "cpu_wake",
                    "device": "cpu",
                    "model": name,
                    "batch": batch,
                    "s": s,
                    "gap_ms": gap_ms,
                    "time_s": after,
                    "back_to_back_s": back_to_back,
                    "extra_s": after - back_to_back,
                    "samples": calls,
                    "cache_copies": n,
                    "setup": setup,
                }
            )
        copies = None  # free this case's caches before the next
    extra = {g: statistics.median(r["extra_s"] for r in rows if r["gap_ms"] == g) for g in WAKE_GAPS_MS}
    wake, idle = wake_and_idle(extra)
    for g in WAKE_GAPS_MS:
        log(
            f"cpu wake-up after {g} ms idle: {extra[g] * 1e6:+.0f} us (median over {len(rows) // len(WAKE_GAPS_MS)} cases)"
        )
    return wake * 1e6, idle * 1e3, rows


def _insitu_fields(
    setup: str, quick: bool, stamp: str, attn_slowdown: Optional[float], rows: list[dict], how: str
) -> tuple[dict, dict]:
    """The kernels-section fields, and their sources, of the CPU wake-up and of attention's own slowdown beside
    the DMA; appends the wake-up rows to ``rows``."""
    wake_us, idle_us, wake_rows = cpu_wake(setup, quick)
    rows += wake_rows
    cases = ", ".join(f"{m} B={b} s={s}" for m, b, s in (QUICK_WAKE_CASES if quick else WAKE_CASES))
    out: dict = {
        "cpu_wake_us": round(wake_us, 1),
        "cpu_idle_before_wake_us": round(idle_us, 1),
    }
    sources = {
        "cpu_wake_us": f"{stamp}: median over decode attention ({cases}; cold cache copies) of the call after a "
        f"{WAKE_GAPS_MS[-1]} ms sleep minus back to back ({how}; cpu_wake rows of the raw CSV)",
        "cpu_idle_before_wake_us": f"{stamp}: the longest of the sleeps {', '.join(map(str, WAKE_GAPS_MS))} ms "
        "up to which the median extra stays below half the wake-up",
    }
    if attn_slowdown is not None:
        out["cpu_attention_slowdown_beside_dma"] = round(max(1.0, attn_slowdown), 4)
        sources["cpu_attention_slowdown_beside_dma"] = (
            f"{stamp}: runtime decode attention of OPT-30B at B=64, s=512 (6 cold caches), "
            f"{beside_dma_method(quick)} ({how})"
        )
    return out, sources


# ----------------------------------------------------------------------------------------- GPU extras


def gpu_dispatch_us() -> float:
    from runtime.backend import Backend
    from runtime.overhead import measure

    return measure(Backend("cuda"))["gpu.op_overhead_us"]


# (sublayer or "attention", tokens = batch rows, context length for attention). The first case sets the
# profile's scalar slowdown; the others show how it depends on the CPU kernel's own DDR read rate (a B = 1
# GEMV reads about twice as fast as fc2 at 64 tokens) and are recorded for the model to use once measured.
BESIDE_DMA_CASES: tuple[tuple[str, int, int], ...] = (
    ("fc2", 64, 0),
    ("fc1", 1, 0),
    ("qkv", 16, 0),
    ("attention", 64, 512),
)


def cold_calls(
    model, case: tuple[str, int, int], copies: int = 6
) -> tuple[list[Callable[[], Any]], float, Optional[float]]:
    """Calls (cold weights: ``copies`` in turn; attention: 6 caches) of one case, the bytes one call reads from DDR,
    and the share of its weights on huge pages (None for attention)."""
    import torch

    from lia_model.sublayers import Sublayer
    from runtime import kernels

    name, tokens, context = case
    if name == "attention":  # decode attention over a live prefix of a preallocated cache, as the executor calls it
        kvh, d = model.num_kv_heads, model.head_dim
        calls, nbytes = [], 0.0
        for _ in range(6):
            kc = torch.randn(tokens, kvh, context + 16, d, dtype=torch.bfloat16)
            vc = torch.randn(tokens, kvh, context + 16, d, dtype=torch.bfloat16)
            q_in = torch.randn(tokens, 1, model.q_dim, dtype=torch.bfloat16)
            kp, vp = kc[:, :, :context], vc[:, :, :context]
            calls.append(lambda q_in=q_in, kp=kp, vp=vp: kernels.attention(q_in, kp, vp, model, context - 1))
            nbytes = 2.0 * tokens * kvh * context * d * 2
        return calls, nbytes, None
    sub = Sublayer(name)
    params = _params(model, sub, "cpu", copies)
    from lia_model.accounting import linear_shape
    from runtime.hostmem import huge_page_fraction

    k, n = linear_shape(model, sub)
    huge = huge_page_fraction([p["w"] for p in params])
    return [_sublayer_call(model, sub, p, tokens, "cpu") for p in params], 2.0 * k * n, huge


def beside_dma_method(quick: bool) -> str:
    """How cpu_beside_dma measures a slowdown, for the profile's source notes."""
    return (
        f"{3 if quick else 6} alternating pairs (alone, then while the runtime's WeightFeeder streams "
        f"{8 if quick else 24} x 256 MiB pinned H2D), ratio of the sums"
    )


def cpu_beside_dma(
    setup: str,
    quick: bool,
    cases: tuple[tuple[str, int, int], ...] = BESIDE_DMA_CASES,
    model_name: str = "opt-30b",
    pairs: int = 0,
) -> tuple[float, Optional[float], list[dict]]:
    """Slowdown of the runtime's CPU kernels (``model_name``'s shapes, OPT-30B by default) while the runtime's own weight feeder
    (runtime/streamer.py: 32 MiB pieces, two in flight, its thread on the core the CPU setup keeps for it, its
    waits) streams pinned host memory. Per case, ``pairs`` alternating (alone, beside) measurements (0: 3 with
    ``quick``, else 6); the slowdown is the ratio of their sums. Returns the first case's (the linears'), the
    attention case's (None when not measured: --quick) and the rows (one per pair)."""
    import torch

    from lia_model.models import get_model
    from runtime.backend import Backend
    from runtime.streamer import Part, WeightFeeder, split

    model = get_model(model_name)
    pairs = pairs or (3 if quick else 6)
    piece = 128 << 20  # elements of bf16: 256 MiB per job part
    pieces = 2 if quick else 8
    host = torch.empty(pieces * piece, dtype=torch.bfloat16).pin_memory()
    dev = torch.empty(piece, dtype=torch.bfloat16, device="cuda")
    backend = Backend("cuda")
    feeder = WeightFeeder(backend)

    def dma(n: int) -> float:
        t0 = time.perf_counter()
        parts = [
            Part(split(dev, host[(i % pieces) * piece : (i % pieces + 1) * piece]), lambda start, end: None)
            for i in range(n)
        ]
        end = feeder.submit([], parts).ready()
        while not end.query():  # a sleeping wait, as the runtime's launching thread never spins on weights
            time.sleep(1e-4)
        return time.perf_counter() - t0

    n_dma = 8 if quick else 24
    dma(2)
    solo_dma = min(dma(n_dma) for _ in range(3))
    rows: list[dict] = []
    medians: dict[str, float] = {}
    for case in cases if not quick else cases[:2]:
        calls, nbytes, huge = cold_calls(model, case)

        def cpu_loop(n: int, calls=calls) -> float:
            t0 = time.perf_counter()
            for i in range(n):
                calls[i % len(calls)]()
            return time.perf_counter() - t0

        cpu_loop(3)
        once = cpu_loop(len(calls)) / len(calls)
        # as many calls as cover about half the DMA window, so the CPU work runs beside the DMA throughout
        n_cpu = max(3, min(400, int(0.5 * solo_dma / max(once, 1e-6))))
        # Alternating pairs (alone, then beside the DMA, back to back): the host's CPU memory bandwidth swings
        # about 2x in runs of seconds (runtime/validation/dram-drift/), so an alone time taken once (or the best
        # of several) and beside times taken later compare two states of the host, not two conditions. The
        # slowdown is the ratio of the pairs' sums.
        solo_sum = beside_sum = 0.0
        for _ in range(pairs):
            solo_cpu = cpu_loop(n_cpu)
            res: dict[str, float] = {}
            th = threading.Thread(target=lambda res=res: res.__setitem__("dma", dma(n_dma)))
            th.start()
            res["cpu"] = cpu_loop(n_cpu)
            th.join()
            solo_sum, beside_sum = solo_sum + solo_cpu, beside_sum + res["cpu"]
            name, tokens, context = case
            rows.append(
                {
                    "family": "cpu_beside_dma",
                    "device": "cpu",
                    "model": model_name,
                    "sublayer": name,
                    "tokens": tokens,
                    "context": context,
                    "time_s": res["cpu"] / n_cpu,
                    "solo_time_s": solo_cpu / n_cpu,
                    "slowdown": res["cpu"] / solo_cpu,
                    "dma_gbps": n_dma * piece * 2 / res["dma"] / 1e9,
                    "dma_solo_gbps": n_dma * piece * 2 / solo_dma / 1e9,
                    "cpu_read_gbps_solo": n_cpu * nbytes / solo_cpu / 1e9,
                    "cpu_read_gbps_beside": n_cpu * nbytes / res["cpu"] / 1e9,
                    "weights_huge_page_fraction": huge,
                    "setup": setup,
                }
            )
        medians.setdefault(case[0], beside_sum / solo_sum)
    feeder.close()
    return medians[cases[0][0]], medians.get("attention"), rows


def measure_linears(
    models: list[str],
    cpu_tokens: tuple[int, ...],
    gpu_tokens: tuple[int, ...],
    out_dir: Path,
    name: str,
    force: bool,
    weight_dtypes=("bf16",),
    probe: Optional[Callable[[], float]] = None,
    gpu_chained_tokens: tuple[int, ...] = (),
) -> Path:
    """Only the linears of ``models``: on the CPU at ``cpu_tokens`` rows (``--cpu-linears-only``, in CPU_ROUNDS rounds),
    then on the GPU at
    ``gpu_tokens`` tokens (``--gpu-linears-only``: needs CUDA), each as a full run times them (``linear_rows``: the
    runtime's sublayer calls, CUDA events on the GPU, one round, the same budget), under the same CPU setup, into
    the raw CSV ``OUT/NAME-kernels.csv`` (no profile; GPU rows named "gpu" as a finished run's). Give that CSV to
    ``--refit`` as an earlier run: its CPU entries join the table or its medians, its GPU entries join the table
    where the run that made the profile did not measure them (token counts its grid lacks, e.g. 2048 between 1024
    and 4096), the others stay. A model or weight dtype whose GPU tables the profile lacks becomes tables of these
    token counts alone: measure the GPU tables' own (sublayer, dtype) shapes.

    ``probe`` (``--probe-against PROFILE``: runtime.host_state's CPU GEMV over that profile's table) is read before
    and after the whole run; every row records both ratios and ``host_drift_flag`` (either more than
    runtime.host_state.DRIFT_FLAG off), and --refit leaves a flagged run out.

    ``gpu_chained_tokens`` (``--gpu-linears-chained``): the bf16 GPU linears of ``models`` also timed as the runtime
    runs them, a layer's four chained (calibrate/gpu_chain.py), at these token counts, in GPU_CHAIN_ROUNDS rounds;
    --refit puts those entries in place of the isolated ones."""
    import pandas as pd

    from calibrate.host import host_info
    from lia_model.inputs import resolve_model
    from runtime import cpu_setup

    if gpu_tokens or gpu_chained_tokens:
        import torch

        if not torch.cuda.is_available():
            flag = "--gpu-linears-only" if gpu_tokens else "--gpu-linears-chained"
            raise LiaInputError(flag, "no CUDA device to time the GPU linears on", "run it on the GPU host")
    csv_path = out_dir / f"{name}-kernels.csv"
    if csv_path.exists() and not force:
        raise LiaInputError("--name", f"'{csv_path}' exists", "choose another --name, or pass --force")
    specs = [resolve_model(m) for m in models]
    out_dir.mkdir(parents=True, exist_ok=True)
    desc = cpu_setup.apply().describe()
    host = host_info()
    what = [f"CPU linears at rows {', '.join(map(str, cpu_tokens))}"] if cpu_tokens else []
    if gpu_tokens:
        what.append(f"GPU linears ({torch.cuda.get_device_name(0)}) at tokens {', '.join(map(str, gpu_tokens))}")
    if gpu_chained_tokens:
        what.append(
            f"GPU linears chained ({torch.cuda.get_device_name(0)}) at tokens {', '.join(map(str, gpu_chained_tokens))}"
        )
    log(f"host {host.hostname}: {host.cpu_model}; {desc}; {'; '.join(what)}")
    rows: list[dict] = []
    before = probe() if probe is not None else None
    if before is not None:
        log(f"host probe before: {before:.2f}x its table")
    llc = host.llc_bytes or LLC_DEFAULT
    for device, tokens, rounds in (("cpu", cpu_tokens, CPU_ROUNDS), ("cuda", gpu_tokens, 1)):
        seen: set[tuple] = set()
        for dtype in weight_dtypes if tokens else ():
            rows += linear_rows(specs, device, tokens, llc, 0.08, desc, seen, rounds, dtype)
    if gpu_chained_tokens:
        from calibrate.gpu_chain import chained_linear_rows

        rows += chained_linear_rows(specs, gpu_chained_tokens, GPU_CHAIN_ROUNDS, desc, log)
    for r in rows:
        if r["device"] == "cuda":  # as a finished run's CSV names the GPU
            r["device"] = "gpu"
    frame = pd.DataFrame(rows)
    if probe is not None:
        from runtime.host_state import drift_columns

        after = probe()
        state = drift_columns(before, after)
        log(
            f"host probe after: {after:.2f}x its table"
            + ("; FLAGGED: --refit will leave this run out" if state["host_drift_flag"] else "")
        )
        for column, value in state.items():
            frame[column] = value
    frame.insert(0, "run_at_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    frame.insert(0, "host", host.hostname)
    frame.to_csv(csv_path, index=False)
    log(f"wrote {csv_path}: {len(rows)} rows")
    return csv_path


def host_probe_for(profile: str) -> Callable[[], float]:
    """runtime.host_state's probe over ``profile``'s CPU tables (``--probe-against``), or a clear error."""
    from lia_model.profiles import load_system
    from runtime.host_state import HostProbe, choose_shape

    if not Path(profile).is_file():
        raise LiaInputError("--probe-against", f"'{profile}' is not a file", "give a profile with CPU kernel tables")
    shape = choose_shape(load_system(profile).kernels)
    if shape is None:
        raise LiaInputError(
            "--probe-against", f"'{profile}' has no CPU kernel tables", "give a profile with CPU kernel tables"
        )
    return HostProbe(shape).time_vs_table


def _drift_pct() -> str:
    from runtime.host_state import DRIFT_FLAG

    return f"{DRIFT_FLAG:.0%}"


def drifted(rows: list[dict]) -> bool:
    """True where a run's rows record a host probe more than DRIFT_FLAG off its table (measure_linears)."""
    return any(r.get("host_drift_flag") is True or str(r.get("host_drift_flag")) == "True" for r in rows)


def _row_counts(
    text: str, flag: str = "--cpu-linears-only", what: str = "row", example: str = "2,8,32,128"
) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise LiaInputError(
            flag, f"'{text}' is not a list of {what} counts", f"give whole numbers >= 1, e.g. {example}"
        )
    return tuple(sorted(set(values)))


# ----------------------------------------------------------------------------------------- the run


def run(
    base: str,
    name: str,
    out_dir: Path,
    models: list[str],
    quick: bool,
    force: bool,
    use_gpu: bool,
    attn_models: tuple[str, ...] = ATTN_MODELS,
    resume_from: Optional[Path] = None,
    weight_dtypes: tuple[str, ...] = ("bf16",),
) -> Path:
    import pandas as pd
    import torch
    import yaml

    from calibrate.host import host_info
    from lia_model.inputs import resolve_model
    from lia_model.profiles import load_system, system_dict
    from runtime import cpu_setup
    from runtime.kernels import gqa_decode_variant

    base_spec = load_system(base)  # validates the base (a name or a path)
    profile_path = out_dir / f"{name}.yaml"
    csv_path = out_dir / f"{name}-kernels.csv"
    if profile_path.exists() and not force:
        raise LiaInputError("--name", f"'{profile_path}' exists", "choose another --name, or pass --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = cpu_setup.apply()
    host = host_info()
    desc = setup.describe()
    log(f"host {host.hostname}: {host.cpu_model}; {desc}")
    specs = [resolve_model(m) for m in models]
    attn_specs = [resolve_model(m) for m in attn_models]
    tokens = QUICK_TOKENS if quick else TOKENS
    budget = 0.03 if quick else 0.08
    llc = host.llc_bytes or LLC_DEFAULT
    t0 = time.perf_counter()
    # Checkpoint: every (family, device, model) block is appended to the partial CSV as soon as it is measured,
    # so a run stopped by a time limit loses at most one block; --resume-from that CSV skips what it holds.
    partial = out_dir / f"{name}-kernels.partial.csv"
    rows: list[dict] = []
    resumed: list[dict] = []
    if resume_from is not None:
        rows = [
            # a finished run's CSV names the GPU "gpu", its partial CSV "cuda"; the contention rows are measured anew
            {**r, "device": "cuda" if r.get("device") == "gpu" else r.get("device")}
            for r in pd.read_csv(resume_from).to_dict("records")
            if r.get("setup") == desc and r.get("family") not in ("cpu_beside_dma", "cpu_wake")
        ]
        # a model's CPU attention grid measured with another GQA decode kernel than this run's is measured again whole
        other_kernel = {r["model"] for r in rows if row_gqa_decode(r) not in (None, gqa_decode_variant())}
        rows = [
            r for r in rows if not (r["family"] == "attention" and r["device"] == "cpu" and r["model"] in other_kernel)
        ]
        for m in sorted(other_kernel):
            log(
                f"cpu attention {m}: resumed rows ran another GQA decode kernel than {gqa_decode_variant()}; measured again"
            )
        resumed = list(rows)  # a copy: rows grows as blocks are measured
        log(f"resumed {len(rows)} rows of this setup from {resume_from}")

    def block(family: str, device: str, model, measure: Callable[[], list[dict]], dtype: str = "bf16") -> None:
        if any(
            r["family"] == family and r["device"] == device and r["model"] == model.name and _row_dtype(r) == dtype
            for r in rows
        ):
            log(f"{device} {family} {model.name}{'' if dtype == 'bf16' else ' ' + dtype}: resumed")
            return
        rows.extend(measure())
        pd.DataFrame(rows).to_csv(partial, index=False)

    cuda = use_gpu and torch.cuda.is_available()
    seen: dict[str, set[tuple]] = {
        dev: {
            (r["sublayer"], int(r["k"]), int(r["n"]), _row_dtype(r))
            for r in rows
            if r["family"] == "linear" and r["device"] == dev
        }
        for dev in ("cpu", "cuda")
    }

    def linear_blocks(device: str, token_counts: tuple[int, ...], rounds: int) -> None:
        """Every model's linears on ``device`` at every weight dtype, one checkpointed block each."""
        for dtype in weight_dtypes:
            for spec in specs:
                block(
                    "linear",
                    device,
                    spec,
                    lambda spec=spec, dtype=dtype: linear_rows(
                        [spec], device, token_counts, llc, budget, desc, seen[device], rounds, dtype
                    ),
                    dtype,
                )

    linear_blocks("cpu", tokens, 1 if quick else CPU_ROUNDS)
    for spec in attn_specs:
        block("attention", "cpu", spec, lambda spec=spec: attention_rows([spec], "cpu", quick, budget, desc, llc))
    dispatch_us, slowdown, attn_slowdown, gpu_name = 0.0, 1.0, None, ""
    dispatch_src = "no GPU measured: 0 (GPU sublayers then cost their device time only)"
    slowdown_src = "no GPU measured: 1 (no contention charged)"
    if cuda:
        gpu_name = torch.cuda.get_device_name(0)
        gpu_tokens = tokens if quick else TOKENS + (8192,)
        linear_blocks("cuda", gpu_tokens, 1)
        for spec in attn_specs:
            block("attention", "cuda", spec, lambda spec=spec: attention_rows([spec], "cuda", quick, budget, desc))
        dispatch_us = gpu_dispatch_us()
        slowdown, attn_slowdown, dma_rows = cpu_beside_dma(desc, quick)
        rows += dma_rows
        dispatch_src = "runtime/overhead.py: executor decode-step slope per sublayer, all-GPU, hidden 64"
        slowdown_src = (
            f"runtime fc2 of OPT-30B at 64 tokens (6 cold weight copies), {beside_dma_method(quick)} "
            "(other kernels beside the DMA: cpu_beside_dma rows of the raw CSV)"
        )
    for r in rows:
        if r["device"] == "cuda":
            r["device"] = "gpu"
    by_name = {m.name: m for m in attn_specs}
    cpu_fits = fit_attention(rows, "cpu", by_name)
    gpu_fits = fit_attention(rows, "gpu", by_name) if cuda else []
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamp = f"calibrated on {host.hostname} on {date}"
    command = (
        f"python -m calibrate.kernel_tables --base {base} --name {name} --out {out_dir} "
        f"--models {','.join(models)}"
        + ("" if weight_dtypes == ("bf16",) else f" --weight-dtypes {','.join(weight_dtypes)}")
        + (" --quick" if quick else "")
        + ("" if cuda else " --no-gpu")
        + (
            f" --resume-from {resume_from} (blocks kept from it, not measured again: "
            + ", ".join(sorted({f"{'gpu' if r['device'] == 'cuda' else r['device']} {r['family']}" for r in resumed}))
            + ")"
            if resume_from is not None
            else ""
        )
    )
    from lia_model.plan import CpuIsa

    kernels = {
        "cpu_isa": _default_isa(base_spec).value if _default_isa(base_spec) else CpuIsa.AMX_BF16.value,
        "setup": desc,
        "gqa_decode": gqa_decode_variant(),
        "cpu_linear": linear_tables(rows, "cpu"),
        "gpu_linear": linear_tables(rows, "gpu"),
        "cpu_attention": cpu_fits,
        "gpu_attention": gpu_fits,
        "cpu_attention_grid": cpu_prefill_grid(rows),
        "gpu_dispatch_us": round(dispatch_us, 2),
        "cpu_slowdown_beside_dma": round(max(1.0, slowdown), 4),
        "source": {
            "cpu_linear": f"{stamp}: runtime.kernels sublayer functions, perf_counter median"
            + (
                ""
                if quick
                else f"; calls of up to {MEMORY_BOUND_TOKENS} rows in {CPU_ROUNDS} rounds spread over each model's "
                f"measurement, {ROUND_ESTIMATE}"
            )
            + f"; {csv_path.name}",
            "gpu_linear": f"{stamp}: runtime.kernels sublayer functions, CUDA events median ({gpu_name or 'none'})",
            "cpu_attention": f"{stamp}: NNLS fit on the attention grid of {', '.join(attn_models)}; {csv_path.name}",
            "cpu_attention_grid": f"{stamp}: the CPU prefill attention grid of {', '.join(attn_models)} as measured "
            f"(perf_counter median per point); {csv_path.name}",
            "gpu_attention": f"{stamp}: NNLS fit on the attention grid of {', '.join(attn_models)}",
            "gpu_dispatch_us": f"{stamp}: {dispatch_src}",
            "cpu_slowdown_beside_dma": f"{stamp}: {slowdown_src}",
        },
    }
    fields, sources = _insitu_fields(desc, quick, stamp, attn_slowdown, rows, "measured with the tables")
    kernels.update(fields)
    kernels["source"].update(sources)
    dma = dma_slowdown(rows)
    if dma is not None:
        kernels["dma_slowdown_beside_cpu"] = round(dma[0], 4)
        kernels["source"]["dma_slowdown_beside_cpu"] = _dma_source(stamp, dma[1], "measured with the tables")
    data = system_dict(base)  # the base with every device inline
    data["name"] = name
    data["description"] = (
        f"{data.get('description', '')} + kernel tables of the runtime ({stamp}{', ' + gpu_name if gpu_name else ''})"
    ).strip()
    data["kernels"] = kernels
    prov = data.get("provenance") or {
        "host": host.hostname,
        "date": date,
        "command": command,
        "versions": {},
        "notes": [],
    }
    prov.setdefault("notes", []).append(
        f"kernel tables: `{command}` on {host.hostname} at {date} "
        f"({time.perf_counter() - t0:.0f} s; {desc}; torch {torch.__version__}; "
        f"python {platform.python_version()})"
    )
    data["provenance"] = prov
    profile_path.write_text(
        f"# Base profile {base} plus the runtime's kernel tables, written by `{command}`.\n"
        f"# Raw measurements: {csv_path.name}.\n" + yaml.safe_dump(data, sort_keys=False, width=120)
    )
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    partial.unlink(missing_ok=True)  # the full CSV holds every row now
    load_system(str(profile_path))  # the written profile must validate
    log(f"wrote {profile_path} and {csv_path} in {time.perf_counter() - t0:.0f} s")
    for f in cpu_fits + gpu_fits:
        log(
            f"attention fit {f['kind']}/{f['phase']}/{f['heads']}: median |err| {100 * f['fit_median_rel_err']:.1f}%, "
            f"max {100 * f['fit_max_rel_err']:.1f}% over {f['points']} points"
        )
    return profile_path


def _default_isa(spec) -> Optional[Any]:
    """The ISA a stock bf16 matmul takes on this machine: the base profile's best present ISA."""
    try:
        return spec.cpu.best_isa()
    except ValueError:
        return None


def _weight_dtypes(text: str) -> tuple[str, ...]:
    """--weight-dtypes as a tuple, each one the runtime runs (runtime/weights.py), bf16 first when given."""
    from lia_model.precision import make_precision
    from runtime.weights import check_runnable

    dtypes = tuple(dict.fromkeys(v.strip().lower() for v in text.split(",") if v.strip()))
    if not dtypes:
        raise LiaInputError("--weight-dtypes", "no dtype given", "e.g. --weight-dtypes bf16,int8,fp8_e4m3")
    for value in dtypes:
        try:
            check_runnable(make_precision(value))
        except LiaInputError as err:
            raise LiaInputError("--weight-dtypes", err.problem, "give bf16, int8 and/or fp8_e4m3") from None
    return tuple(sorted(dtypes, key=lambda v: v != "bf16"))


def _resume_path(text: Optional[str]) -> Optional[Path]:
    if not text:
        return None
    path = Path(text)
    if not path.is_file():
        raise LiaInputError("--resume-from", f"'{text}' is not a file", "give the partial CSV of the stopped run")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="system profile (name or path) the tables are added to")
    parser.add_argument("--name")
    parser.add_argument(
        "--refit",
        nargs="+",
        metavar="PROFILE CSV [EARLIER_CSV ...]",
        help="refit the attention models of a kernel-table profile from its raw CSV and re-estimate its CPU linear "
        "table, each entry the median over this and earlier runs' raw CSVs when given, and add to its GPU linear tables "
        "the entries only earlier runs measured (--gpu-linears-only; measures nothing; needs --force)",
    )
    parser.add_argument(
        "--remeasure-beside-dma",
        metavar="PROFILE",
        help="copy a kernel-table profile to --out with only its CPU-beside-DMA slowdown measured again (needs CUDA)",
    )
    parser.add_argument(
        "--remeasure-insitu",
        metavar="PROFILE",
        help="as --remeasure-beside-dma, and also attention's own slowdown beside the DMA and the CPU wake-up after "
        "a wait: what a campaign re-measures at its start (needs CUDA)",
    )
    parser.add_argument(
        "--cpu-linears-only",
        metavar="ROWS",
        help="measure only the CPU linears of --models at these row counts (e.g. 2,8,32,128) into OUT/NAME-kernels.csv, "
        "for --refit to add as an earlier run",
    )
    parser.add_argument(
        "--gpu-linears-only",
        metavar="TOKENS",
        help="measure only the GPU linears of --models at these token counts (e.g. 512,2048) into OUT/NAME-kernels.csv "
        "(with --cpu-linears-only: both, into one CSV), for --refit to add the entries the profile's run did not "
        "measure (needs CUDA)",
    )
    parser.add_argument(
        "--gpu-linears-chained",
        metavar="TOKENS",
        help="time the bf16 GPU linears of --models as the runtime runs them, a layer's four chained "
        "(calibrate/gpu_chain.py), at these token counts into OUT/NAME-kernels.csv (with the other -only flags: "
        "all into one CSV); --refit puts them in place of the isolated entries (needs CUDA)",
    )
    parser.add_argument(
        "--probe-against",
        metavar="PROFILE",
        help="with --cpu-linears-only: time runtime.host_state's CPU GEMV before and after against PROFILE's tables "
        "and record both in every row; --refit leaves a run more than 15%% off out",
    )
    parser.add_argument("--out", default="results/calibration")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument(
        "--attn-models",
        default=",".join(ATTN_MODELS),
        help="models whose heads the attention grid uses (names or config.json paths)",
    )
    parser.add_argument(
        "--resume-from",
        metavar="CSV",
        help="a partial raw CSV of an interrupted run (OUT/NAME-kernels.partial.csv): its blocks measured under "
        "this host's CPU setup are kept, the rest measured",
    )
    parser.add_argument(
        "--weight-dtypes",
        default="bf16",
        help="stored weight dtypes whose linears are timed, comma-separated: bf16, int8, fp8_e4m3 (default bf16)",
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.refit:
            if len(args.refit) < 2:
                raise LiaInputError(
                    "--refit", "needs a profile and its raw CSV", "give --refit PROFILE CSV [EARLIER_CSV ...]"
                )
            print(refit(args.refit[0], args.refit[1], args.force, tuple(args.refit[2:])))
            return 0
        if args.remeasure_beside_dma:
            print(remeasure_beside_dma(args.remeasure_beside_dma, Path(args.out), args.force))
            return 0
        if args.remeasure_insitu:
            print(remeasure_beside_dma(args.remeasure_insitu, Path(args.out), args.force, insitu=True))
            return 0
        if args.probe_against and not args.cpu_linears_only:
            raise LiaInputError(
                "--probe-against", "only a --cpu-linears-only run records the probe", "add --cpu-linears-only ROWS"
            )
        if (
            args.cpu_linears_only is not None
            or args.gpu_linears_only is not None
            or args.gpu_linears_chained is not None
        ):
            cpu_rows = _row_counts(args.cpu_linears_only) if args.cpu_linears_only is not None else ()
            gpu_tokens = (
                _row_counts(args.gpu_linears_only, "--gpu-linears-only", "token", "512,2048")
                if args.gpu_linears_only is not None
                else ()
            )
            chained_tokens = (
                _row_counts(args.gpu_linears_chained, "--gpu-linears-chained", "token", "256,2048")
                if args.gpu_linears_chained is not None
                else ()
            )
            if not args.name:
                raise LiaInputError("--name", "no name given", "e.g. --name emr-h200-kernels-rows")
            print(
                measure_linears(
                    [m for m in args.models.split(",") if m],
                    cpu_rows,
                    gpu_tokens,
                    Path(args.out),
                    args.name,
                    args.force,
                    _weight_dtypes(args.weight_dtypes),
                    host_probe_for(args.probe_against) if args.probe_against else None,
                    chained_tokens,
                )
            )
            return 0
        if not args.base or not args.name:
            raise LiaInputError(
                "--base/--name", "both are needed to measure", "e.g. --base emr-h100-calibrated --name emr-h200-kernels"
            )
        path = run(
            args.base,
            args.name,
            Path(args.out),
            [m for m in args.models.split(",") if m],
            args.quick,
            args.force,
            not args.no_gpu,
            tuple(m for m in args.attn_models.split(",") if m),
            _resume_path(args.resume_from),
            _weight_dtypes(args.weight_dtypes),
        )
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
