"""Which CPU decode attention kernel for GQA models: the grouped matmul pair or SDPA (made for the GPU host).

Why: the kernel tables put the runtime's CPU decode attention for Llama-2-70B (GQA, G = 8: a matmul pair over
[b,kv,G,d]) at 7-19 GB/s of K/V on the GPU host, where SDPA ran OPT-30B's MHA decode at 42-75 GB/s over the same
grid (hwprofiles/calibration/emr-h200-kernels-*-kernels.csv, fifteenth session). ``runtime.kernels`` can run GQA
decode as SDPA with a KV group's G query heads as G unmasked query rows (``LIA_GQA_DECODE=sdpa``); on a 2-core VM,
one thread, that was 0.9-3.4x as fast. This probe measures both on the host before the default changes.

It times ``runtime.kernels.attention`` exactly as the calibrator's attention grid does (the decode grid of
``calibrate.kernel_tables.DECODE_GRID``, live-prefix views of caches cycled so that together they exceed 4x the
LLC), the two variants interleaved in rounds (each round times both at every point, so a swing of the host's
memory speed lands on both alike), and checks that they agree to bf16 precision.

    python -m runtime.probe_gqa_decode --out DIR [--model llama-2-70b] [--rounds 3] [--quick] [--force]

It writes ``gqa_decode_probe.csv`` (one row per point, variant and round: seconds, K/V GB/s) and prints per point
the median of each variant and their ratio. Switching the default afterwards means measuring the CPU attention
tables again under it (its setup string differs: ``runtime.cpu_setup``).
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Optional

import pandas as pd
import torch

CSV_NAME = "gqa_decode_probe.csv"
QUICK_GRID = ((2, 24), (4, 48))
VARIANTS = ("grouped", "sdpa")


def probe(model, grid, rounds: int, cache_bytes: int, budget_s: float = 0.1) -> pd.DataFrame:
    """Both variants at every (batch, context) of ``grid`` for ``model`` (a GQA ModelSpec), ``rounds`` times each,
    interleaved; raises when they disagree beyond bf16 precision."""
    from calibrate.kernel_tables import live_prefix_caches
    from calibrate.tensors import cycling
    from calibrate.timing import time_host
    from runtime import kernels

    if model.num_heads == model.num_kv_heads:
        raise ValueError(f"{model.name} has no grouped query heads (GQA): nothing to compare")
    rows = []
    previous = os.environ.get("LIA_GQA_DECODE")
    try:
        for batch, s in grid:
            caches, kv_bytes = live_prefix_caches(model, batch, s, cache_bytes)
            q_in = torch.randn(batch, 1, model.q_dim, dtype=torch.bfloat16)
            outs = {}
            for variant in VARIANTS:
                os.environ["LIA_GQA_DECODE"] = variant
                outs[variant] = kernels.attention(q_in, *caches[0], model, s - 1).float()
            if not torch.allclose(outs["grouped"], outs["sdpa"], rtol=2e-2, atol=2e-2):
                raise AssertionError(f"the variants disagree at batch {batch}, context {s}")
            fns = [lambda kp=kp, vp=vp: kernels.attention(q_in, kp, vp, model, s - 1) for kp, vp in caches]
            for r in range(rounds):
                for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    os.environ["LIA_GQA_DECODE"] = variant
                    t = time_host(cycling(fns), budget_s=budget_s).median_s
                    rows.append(
                        {
                            "model": model.name,
                            "batch": batch,
                            "context": s,
                            "variant": variant,
                            "round": r,
                            "time_s": t,
                            "kv_gbps": kv_bytes / t / 1e9,
                            "copies": len(caches),
                        }
                    )
    finally:
        if previous is None:
            os.environ.pop("LIA_GQA_DECODE", None)
        else:
            os.environ["LIA_GQA_DECODE"] = previous
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per point: the median over rounds of each variant, and grouped / sdpa (above 1: SDPA is faster)."""
    med = df.groupby(["model", "batch", "context", "variant"], sort=False)["time_s"].median().unstack("variant")
    med["grouped_over_sdpa"] = med["grouped"] / med["sdpa"]
    return med.reset_index()


def main(argv: Optional[list[str]] = None) -> int:
    from runtime.probe_io import output_refused, probe_parser, save

    ap = probe_parser(__doc__, "Two small points (a test run).")
    ap.add_argument("--model", default="llama-2-70b", help="a GQA model of the catalog, or a config.json path")
    ap.add_argument("--rounds", type=int, default=3, help="Rounds of both variants (interleaved).")
    args = ap.parse_args(argv)
    from lia_model.errors import LiaInputError
    from lia_model.inputs import resolve_model

    if output_refused(args.out / CSV_NAME, args.force):
        return 2
    if args.rounds < 1:
        print("error: --rounds must be at least 1", file=sys.stderr)
        return 2
    try:
        model = resolve_model(args.model)
    except LiaInputError as err:
        print(f"error: --model: {err}", file=sys.stderr)
        return 2
    if model.num_heads == model.num_kv_heads:
        print(f"error: --model: {model.name} has no grouped query heads (GQA) -- use e.g. llama-2-70b", file=sys.stderr)
        return 2
    from calibrate.host import host_info
    from calibrate.kernel_tables import DECODE_GRID, LLC_DEFAULT
    from runtime import cpu_setup

    os.environ.pop("LIA_GQA_DECODE", None)  # the setup string of the default kernel
    setup = cpu_setup.apply().describe()
    df = probe(model, QUICK_GRID if args.quick else DECODE_GRID, args.rounds, host_info().llc_bytes or LLC_DEFAULT)
    df = save(df, setup, args.out / CSV_NAME)
    per_point = summary(df)
    print(f"{'point':22s} {'grouped ms':>10s} {'sdpa ms':>9s} {'grouped/sdpa':>12s}")
    for _, r in per_point.iterrows():
        point = f"{r['model']} {r['batch']}x{r['context']}"
        print(f"{point:22s} {r['grouped'] * 1e3:10.3f} {r['sdpa'] * 1e3:9.3f} {r['grouped_over_sdpa']:12.2f}")
    print(f"median grouped/sdpa over the points: {statistics.median(per_point['grouped_over_sdpa']):.2f}")
    print(f"wrote {args.out / CSV_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
