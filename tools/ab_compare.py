"""Compare validation passes of the same points run with different runtime settings (campaign parts S and T).

    python tools/ab_compare.py DIR [DIR ...]      # each DIR: a pass's lia validate --out, named <part><N>-<mode>

Prints, per point, the measured TTFT, TPOT and latency of each mode (the median over that mode's passes) and the
ratio of the first mode to the second, then the model's error against each mode: its prediction in that mode's
passes (part T predicts each kernel with its own fit) over its measurement. With per-sublayer columns it adds the
decode attention's time per call (CPU fused attention lands in attn_context). No GPU needed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

METRICS = (
    ("ttft", "measured_ttft_s", "predicted_ttft_s"),
    ("tpot", "measured_tpot_mean_s", "predicted_tpot_mean_s"),
    ("latency", "measured_latency_s", "predicted_latency_s"),
)
DECODE_ATTENTION = ("decode_attn", "measured_decode_attn_context_ms", "predicted_decode_attn_context_ms")  # in ms


def load(dirs: list[str]) -> pd.DataFrame:
    frames = []
    for d in dirs:
        m = re.fullmatch(r"[a-z](\d+)-(\w+)", Path(d).name)
        if m is None:
            raise ValueError(f"{d}: a pass folder is named <part><N>-<mode> (e.g. s1-new, t2-grouped)")
        csv = Path(d) / "results.csv"
        if not csv.is_file():
            raise FileNotFoundError(csv)
        df = pd.read_csv(csv)
        df = df[df["status"] == "ran"] if "status" in df.columns else df
        frames.append(df.assign(pass_index=int(m.group(1)), mode=m.group(2)))
    if not frames:
        raise ValueError("no pass folders given")
    return pd.concat(frames, ignore_index=True)


def table(runs: pd.DataFrame) -> pd.DataFrame:
    modes = list(dict.fromkeys(runs.sort_values("pass_index")["mode"]))
    rows = []
    for pid, g in runs.groupby("point_id", sort=False):
        row = {"point": pid, "passes": " ".join(str(i) for i in sorted(g["pass_index"]))}
        metrics = [(n, m, p, 1e3) for n, m, p in METRICS]
        if DECODE_ATTENTION[1] in g.columns and g[DECODE_ATTENTION[1]].notna().any():
            metrics.append((*DECODE_ATTENTION, 1.0))
        for name, meas, pred, to_ms in metrics:
            for mode in modes:
                vals = g.loc[g["mode"] == mode, meas]
                row[f"{name}_{mode}_ms"] = to_ms * vals.median() if len(vals) else float("nan")
            if len(modes) >= 2:
                row[f"{name}_{modes[0]}/{modes[1]}"] = row[f"{name}_{modes[0]}_ms"] / row[f"{name}_{modes[1]}_ms"]
            for mode in modes:
                predicted_ms = to_ms * g.loc[g["mode"] == mode, pred].median()
                row[f"{name}_err_{mode}"] = predicted_ms / row[f"{name}_{mode}_ms"] - 1
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        t = table(load(args))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc} -- give the pass folders of campaign part S or T", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.3f}".format):
        print(t.to_string(index=False))
        ratio_cols = [c for c in t.columns if "/" in c]
        if ratio_cols:
            print("\nmedian ratio over points: " + ", ".join(f"{c} {t[c].median():.3f}" for c in ratio_cols))
        err_cols = [c for c in t.columns if "_err_" in c]
        print("mean |error| over points: " + ", ".join(f"{c} {t[c].abs().mean():.1%}" for c in err_cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
