"""Do the CPU linear tables hold in situ? Each CPU linear shape alone and beside the weight DMA, against its table.

Why: in the tenth session's re-runs (runtime/validation/wave2-r2/) Llama-2-70B's CPU qkv and fc2 at 32-384 rows took
1.3-2.0x their kernel-table time in situ, while the model charges the one calibrated slowdown (1.28, measured on
OPT-30B fc2 at 64 tokens). Either the table entries do not reproduce (one measurement each), or the slowdown beside
the DMA depends on the shape (a GEMV at 1 row reads weights once; an AMX GEMM at 16-64 rows also reorders them).

For each (model, sublayer, tokens) this runs ``calibrate.kernel_tables.cpu_beside_dma`` (the runtime's sublayer
function over 6 cold weight copies, in 6 alternating pairs alone and while the runtime's weight feeder streams pinned H2D) and
prints its solo time over the profile's table (``table_seconds``), its slowdown beside the DMA and the share of
its weights on transparent huge pages (``runtime.hostmem.huge_page_fraction``). Needs CUDA.

    python -m runtime.probe_beside_dma --out DIR [--system PROFILE] [--quick] [--force]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd

# (model, ((sublayer, tokens, 0), ...)): the shapes of the worst in-situ points, and the calibrated case
CASES: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...] = (
    ("llama-2-70b", (("fc2", 1, 0), ("fc2", 16, 0), ("fc2", 32, 0), ("fc2", 64, 0), ("qkv", 32, 0), ("qkv", 64, 0))),
    ("llama-2-70b", (("qkv", 256, 0), ("out_proj", 64, 0))),
    ("opt-30b", (("fc2", 64, 0), ("fc1", 1, 0), ("out_proj", 64, 0))),
    ("opt-66b", (("fc1", 32, 0), ("fc1", 64, 0), ("out_proj", 32, 0))),
)
QUICK_CASES = (("opt-30b", (("fc2", 16, 0), ("fc1", 1, 0))),)


def probe(system_path: str, quick: bool) -> pd.DataFrame:
    from calibrate.kernel_tables import cpu_beside_dma
    from lia_model.accounting import linear_shape
    from lia_model.hardware import table_seconds
    from lia_model.models import get_model
    from lia_model.profiles import load_system
    from lia_model.sublayers import Sublayer
    from runtime import cpu_setup

    tables = load_system(system_path).kernels
    setup = cpu_setup.apply().describe()
    out = []
    for name, cases in QUICK_CASES if quick else CASES:
        model = get_model(name)
        _, _, rows = cpu_beside_dma(setup, False, cases, model_name=name)
        for sub, tokens, _ in cases:
            mine = [r for r in rows if r["sublayer"] == sub and r["tokens"] == tokens]
            k, n = linear_shape(model, Sublayer(sub))
            table = tables.linear("cpu", sub, k, n) if tables is not None else None
            solo = statistics.mean(r["solo_time_s"] for r in mine)
            beside = statistics.mean(r["time_s"] for r in mine)
            out.append(
                {
                    "model": name,
                    "sublayer": sub,
                    "tokens": tokens,
                    "solo_s": solo,
                    "beside_dma_s": beside,
                    "slowdown": beside / solo,  # the pairs' ratio of sums (one call count per case)
                    "slowdowns": ",".join(f"{r['slowdown']:.3f}" for r in mine),
                    "table_s": table_seconds(table, tokens) if table is not None else float("nan"),
                    "dma_gbps": statistics.median(r["dma_gbps"] for r in mine),
                    "dma_solo_gbps": mine[0]["dma_solo_gbps"],
                    "cpu_read_gbps_solo": statistics.mean(r["cpu_read_gbps_solo"] for r in mine),
                    "weights_huge_page_fraction": mine[0]["weights_huge_page_fraction"],
                    "setup": setup,
                }
            )
    df = pd.DataFrame(out)
    df["solo_over_table"] = df["solo_s"] / df["table_s"]
    df["beside_over_table"] = df["beside_dma_s"] / df["table_s"]
    return df


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--system", default="hwprofiles/systems/emr-h200-kernels.yaml", help="profile with the tables")
    ap.add_argument("--quick", action="store_true", help="two OPT-30B shapes (a test run)")
    ap.add_argument("--force", action="store_true", help="replace an existing CSV")
    args = ap.parse_args(argv)
    target = args.out / "probe_beside_dma.csv"
    if target.exists() and not args.force:
        print(f"error: --out: '{target}' exists -- pass --force to replace it", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA device -- the probe streams weights to a GPU; run it on the GPU host", file=sys.stderr)
        return 2
    if not Path(args.system).is_file():
        print(f"error: --system: '{args.system}' is not a file -- give a kernel-table profile", file=sys.stderr)
        return 2
    from lia_model.errors import LiaInputError

    try:
        df = probe(args.system, args.quick)
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(target, index=False)
    print(
        f"{'shape':30s} {'table ms':>9s} {'solo ms':>8s} {'x table':>8s} {'beside ms':>9s} {'slowdown':>8s} {'x table':>8s}"
    )
    for _, r in df.iterrows():
        shape = f"{r['model']} {r['sublayer']} x{r['tokens']}"
        print(
            f"{shape:30s} {r['table_s'] * 1e3:9.2f} {r['solo_s'] * 1e3:8.2f} {r['solo_over_table']:8.2f} "
            f"{r['beside_dma_s'] * 1e3:9.2f} {r['slowdown']:8.3f} {r['beside_over_table']:8.2f} "
            f"{float('nan') if pd.isna(r['weights_huge_page_fraction']) else r['weights_huge_page_fraction']:5.2f}"
        )
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
