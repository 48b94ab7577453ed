"""Out-of-sample check of the CPU prefill attention model: the runtime's attention kernels timed at shapes the
calibrator's grid never measured, beside what the profile predicts for them from its measured grid
(lia_model/attention_grid.py) and from its fit.

    python tools/probe_attention_grid.py --system hwprofiles/systems/emr-h200-kernels.yaml --out DIR
        [--shapes 2x768,3x768,8x384,12x192,2x1536] [--models opt-30b,llama-2-70b] [--budget-s 0.3]

Each shape (batch x s, prefill: q = s) is timed exactly as the calibrator times its grid
(calibrate.kernel_tables.attention_rows: the runtime's kernels over live-prefix caches cycled beyond the LLC, after
runtime.cpu_setup.apply()), so the only thing under test is how the profile reads its grid between points. Writes
DIR/attention-grid-probe.csv and prints one row per shape and kernel. Needs torch; no GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SHAPES = "2x768,3x768,8x384,12x192,2x1536"


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for item in text.split(","):
        try:
            b, s = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"'{item}' is not BATCHxS (e.g. 2x768)") from None
        if b < 1 or s < 1:
            raise ValueError(f"'{item}': batch and s must be at least 1")
        out.append((b, s))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", required=True, help="a profile with kernel tables")
    ap.add_argument("--out", required=True, type=Path, help="folder for attention-grid-probe.csv")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"BATCHxS list (default {DEFAULT_SHAPES})")
    ap.add_argument("--models", default="opt-30b,llama-2-70b")
    ap.add_argument("--budget-s", type=float, default=0.3, help="timing budget per kernel and shape")
    ap.add_argument("--force", action="store_true", help="replace an existing CSV")
    args = ap.parse_args(argv)
    csv = args.out / "attention-grid-probe.csv"
    if csv.exists() and not args.force:
        print(f"error: --out: '{csv}' exists -- pass --force to replace it", file=sys.stderr)
        return 2
    try:
        shapes = _shapes(args.shapes)
    except ValueError as err:
        print(f"error: --shapes: {err}", file=sys.stderr)
        return 2
    import numpy as np
    import pandas as pd

    from calibrate.kernel_tables import attention_rows
    from lia_model.accounting import attention_bytes_flops
    from lia_model.accounting import attention_rows as query_rows
    from lia_model.attention_grid import prefill_seconds
    from lia_model.errors import LiaInputError
    from lia_model.inputs import resolve_model
    from lia_model.profiles import load_system
    from runtime import cpu_setup

    try:
        system = load_system(args.system)
        models = [resolve_model(m.strip()) for m in args.models.split(",")]
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if system.kernels is None or not system.kernels.cpu_attention_grid:
        print(
            f"error: --system: '{args.system}' has no CPU attention grid -- give a profile refitted with it",
            file=sys.stderr,
        )
        return 2
    setup = cpu_setup.apply().describe()
    rows = attention_rows(models, "cpu", False, args.budget_s, setup, grids=(("prefill", shapes),))
    tables, out = system.kernels, []
    by_name = {m.name: m for m in models}
    for r in rows:
        m = by_name[r["model"]]
        layout = "gqa" if m.num_heads != m.num_kv_heads else "mha"
        fit = tables.attention("cpu", r["kind"], "prefill", layout)
        b, s = int(r["batch"]), int(r["s"])
        nbytes, flops = attention_bytes_flops(m, b, s, np.asarray([float(s)]), r["kind"])
        fitted = float(np.ravel(fit.seconds(nbytes, flops, query_rows(m, b, s)))[0]) if fit else float("nan")
        grid = prefill_seconds(tables.cpu_attention_grid, r["kind"], b, m.num_heads, m.num_kv_heads, m.head_dim, s)
        out.append(
            {
                "model": m.name,
                "kind": r["kind"],
                "batch": b,
                "s": s,
                "measured_ms": 1e3 * r["time_s"],
                "grid_ms": 1e3 * grid if grid is not None else float("nan"),
                "fit_ms": 1e3 * fitted,
                "grid_err_pct": 100 * (grid / r["time_s"] - 1) if grid is not None else float("nan"),
                "fit_err_pct": 100 * (fitted / r["time_s"] - 1),
                "samples": r["samples"],
                "setup": setup,
            }
        )
    table = pd.DataFrame(out)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv, index=False)
    print(table.drop(columns=["setup"]).round(3).to_string(index=False))
    for col in ("grid_err_pct", "fit_err_pct"):
        e = table[col].abs().dropna()
        if len(e):
            print(f"{col}: median |error| {e.median():.1f}%, max {e.max():.1f}% over {len(e)} kernels x shapes")
    print(f"wrote {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
