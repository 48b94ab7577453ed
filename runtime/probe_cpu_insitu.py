"""Why CPU attention runs slower inside the runtime than in the kernel tables (any x86 host; made for the GPU host).

Why: over 108 validation points, CPU attention measured in the runtime took up to 20x its calibrated time
(runtime/validation/summary.md, "CPU attention / calibrated, beside the weight DMA": min 4.7%). At B = 1 a
decode attention sublayer took 0.4-0.5 ms in situ against 0.02-0.2 ms in the tables. The calibrator times
``runtime.kernels.attention`` back to back on one cache (calibrate/kernel_tables.py ``attention_rows``); in the
runtime every layer reads its own cache, which the DMA engine or another layer's kernels wrote last, and the
OpenMP threads were idle (waiting for a copy) just before the call.

This probe times the same kernel on the same shapes four ways:

- ``hot``: back to back on one cache (what the kernel tables do; calibrate.timing.time_host);
- ``cold``: back to back, each call on the next of enough cache copies to hold 1 GiB (no cache reuse);
- ``cold+sleep``: as cold, with the process asleep for ``--gap-ms`` before each call (its OpenMP threads park);
- ``cold+spin``: as cold, with the launching thread busy for ``--gap-ms`` before each call (the workers park,
  the launching thread stays on its core, as when the runtime polls a copy event);
- ``cold-arena``: as cold, over caches carved from a ``runtime.hostmem.HostArena`` as the runtime's host KV cache
  is (one anonymous mapping, page-locked with cudaHostRegister where CUDA is present), each [B, kv_heads, s + 8,
  head_dim] with the live prefix read. Why: in parts Q and Q2 (runtime/validation/wave2-q2/) decode attention of
  OPT-30B at B = 8, s = 512 took 2.6-3.2 ms in situ against 1.57 ms in the tables (1.85 ms with the calibrated
  slowdown beside the DMA), while the CPU linears of the same steps were within their slowdown.

Run it once per OpenMP setting to see what the wait policy changes, e.g. ``OMP_WAIT_POLICY=ACTIVE``.
It writes ``cpu_insitu_probe.csv`` (one row per case and mode) and prints a table.

    python -m runtime.probe_cpu_insitu --out DIR [--gap-ms 2] [--quick] [--force]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lia_model.models import ModelSpec, get_model
from runtime import kernels

MiB = 2**20
ROTATE_BYTES = 1 << 30

# (model, phase, batch, s): the decode shapes of the validation points whose CPU attention was furthest from its
# table (B = 1 and 4 at a few hundred positions), a large decode batch, and the long prompt whose prefill
# attention was over-predicted (opt30b-12L L = 2016).
CASES = (
    ("opt-30b", "decode", 1, 288),
    ("opt-30b", "decode", 4, 520),
    ("opt-30b", "decode", 64, 40),
    ("opt-30b", "decode", 1, 2022),
    ("llama-2-70b", "decode", 1, 1030),
    ("llama-2-70b", "decode", 64, 134),
    ("opt-30b", "prefill", 1, 2016),
    ("opt-30b", "decode", 8, 520),  # parts Q and Q2's CPU attention (runtime/validation/wave2-q2/)
    ("llama-2-70b", "decode", 32, 264),
)
QUICK_CASES = (("opt-30b", "decode", 1, 64), ("llama-2-70b", "decode", 2, 64))


def cache_copies(model: ModelSpec, batch: int, s: int, q: int, n: int) -> list[tuple[torch.Tensor, ...]]:
    """n distinct (Q, K, V) sets, each K and V the live prefix of a wider cache (clones of one random set: the
    values do not change the time, and a clone costs a copy, not a random draw)."""
    kvh, d = model.num_kv_heads, model.head_dim
    cache = torch.randn(batch, kvh, s + 16, d, dtype=torch.bfloat16)
    q_in = torch.randn(batch, q, model.q_dim, dtype=torch.bfloat16)
    return [(q_in.clone(), cache.clone()[:, :, :s], cache.clone()[:, :, :s]) for _ in range(n)]


def arena_copies(copies: list[tuple[torch.Tensor, ...]]) -> tuple[object, list[tuple[torch.Tensor, ...]]]:
    """(arena, copies): the same Q, K and V values, with K and V the live prefixes of [B, kv, s + 8, d] caches
    carved from one HostArena, page-locked where CUDA is present (the runtime's KV arena, runtime/kvstore.py).
    Keep the arena alive while the copies are used."""
    from runtime.backend import Backend
    from runtime.hostmem import HostArena

    q_in, k, _ = copies[0]
    b, kvh, s, d = k.shape
    shape = (b, kvh, s + 8, d)
    per = b * kvh * (s + 8) * d
    backend = Backend("cuda" if torch.cuda.is_available() else "cpu")
    arena = HostArena(backend, 2 * per * len(copies), pinned=True, random_fill=False)
    out = []
    for j, (q, kk, vv) in enumerate(copies):
        kc = arena.view(2 * j * per, per).view(shape)
        vc = arena.view((2 * j + 1) * per, per).view(shape)
        kc[:, :, :s].copy_(kk)
        vc[:, :, :s].copy_(vv)
        out.append((q.clone(), kc[:, :, :s], vc[:, :, :s]))
    return arena, out


def timed_calls(call, copies, calls: int, gap_s: float, gap: str) -> list[float]:
    times = []
    for i in range(calls):
        args = copies[i % len(copies)]
        if gap == "sleep":
            time.sleep(gap_s)
        elif gap == "spin":
            end = time.perf_counter() + gap_s
            while time.perf_counter() < end:
                pass
        t0 = time.perf_counter()
        call(*args)
        times.append(time.perf_counter() - t0)
    return times


def attention_case(name: str, phase: str, batch: int, s: int, n: int | None = None):
    """(call, copies, KV bytes one call reads) of one case: ``runtime.kernels.attention`` as the executor calls it,
    over n cache copies (default: enough to hold ``ROTATE_BYTES``, 2 to 128), so that back-to-back calls read
    cold caches. The calibrator's wake-up measurement (calibrate.kernel_tables ``cpu_wake``) uses it too."""
    model = get_model(name)
    q = 1 if phase == "decode" else s
    cache_bytes = 2 * batch * model.num_kv_heads * s * model.head_dim * 2
    n = n or max(2, min(128, math.ceil(ROTATE_BYTES / cache_bytes)))

    def call(q_in, k, v, model=model, pos0=s - q):
        return kernels.attention(q_in, k, v, model, pos0)

    return call, cache_copies(model, batch, s, q, n), cache_bytes


def probe(cases, gap_ms: float, calls: int) -> pd.DataFrame:
    from calibrate.timing import time_host

    rows = []
    for name, phase, batch, s in cases:
        call, copies, cache_bytes = attention_case(name, phase, batch, s)
        n = len(copies)
        first = copies[0]
        hot = time_host(lambda: call(*first), budget_s=0.3)
        modes = {"hot": [hot.median_s]}
        timed_calls(call, copies, min(n, 8), 0.0, "none")  # first touch of every copy, untimed
        modes["cold"] = timed_calls(call, copies, calls, 0.0, "none")
        modes["cold+sleep"] = timed_calls(call, copies, calls, gap_ms / 1e3, "sleep")
        modes["cold+spin"] = timed_calls(call, copies, calls, gap_ms / 1e3, "spin")
        arena, in_arena = arena_copies(copies)
        timed_calls(call, in_arena, min(n, 8), 0.0, "none")
        modes["cold-arena"] = timed_calls(call, in_arena, calls, 0.0, "none")
        arena.release()
        arena = in_arena = None
        for mode, ts in modes.items():
            med = statistics.median(ts)
            rows.append(
                {
                    "model": name,
                    "phase": phase,
                    "batch": batch,
                    "s": s,
                    "mode": mode,
                    "median_s": med,
                    "min_s": min(ts),
                    "max_s": max(ts),
                    "calls": len(ts) if mode != "hot" else hot.samples,
                    "cache_copies": 1 if mode == "hot" else n,
                    "kv_bytes_per_call": cache_bytes,
                    "kv_read_gbps": cache_bytes / med / 1e9,
                    "vs_hot": med / hot.median_s,
                    "gap_ms": gap_ms if "+" in mode else 0.0,
                }
            )
        copies = first = None  # free this case's caches before the next
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="Idle time before each call in the gap modes (ms).")
    ap.add_argument("--calls", type=int, default=40, help="Timed calls per cold mode.")
    ap.add_argument("--tag", default="", help="Label of this run's OpenMP setting (a column of the CSV).")
    ap.add_argument("--quick", action="store_true", help="Two small shapes (a test run).")
    ap.add_argument("--force", action="store_true", help="Replace an existing CSV of the same tag.")
    args = ap.parse_args(argv)
    name = f"cpu_insitu_probe{'-' + args.tag if args.tag else ''}.csv"
    from runtime.probe_io import output_refused, stamped

    if output_refused(args.out / name, args.force, ", or another --tag"):
        return 2
    if not (args.gap_ms >= 0 and math.isfinite(args.gap_ms)) or args.calls < 1:
        print("error: --gap-ms must be a finite number >= 0 and --calls >= 1", file=sys.stderr)
        return 2
    from runtime import cpu_setup

    setup = cpu_setup.apply().describe()
    args.out.mkdir(parents=True, exist_ok=True)
    df = probe(QUICK_CASES if args.quick else CASES, args.gap_ms, args.calls)
    omp = ",".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
    df.insert(0, "omp", omp or "default")
    df.insert(0, "tag", args.tag)
    df = stamped(df, setup, with_time=False)
    df.to_csv(args.out / name, index=False)
    print(f"cpu setup: {setup}; OpenMP: {omp or 'default'}")
    print(f"{'case':34s} {'mode':11s} {'median ms':>9s} {'GB/s':>7s} {'x hot':>6s}")
    for _, r in df.iterrows():
        case = f"{r['model']} {r['phase']} B={r['batch']} s={r['s']}"
        print(f"{case:34s} {r['mode']:11s} {r['median_s'] * 1e3:9.3f} {r['kv_read_gbps']:7.1f} {r['vs_hot']:6.2f}")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
