"""Summarise a measured policy map: the optimum beside the paper's three policies at each (B, L_in).

    python -m studies.measured.policy_map RESULTS.csv --out DIR [--force]

RESULTS.csv is what ``lia validate`` wrote for studies/measured/policy-map-points.yaml. Writes
DIR/measured-policy-map.csv (one row per (batch, input_len)) and DIR/measured-policy-map.png, and prints the
table. The speedup of the optimum = the best measured latency of the three paper policies / the optimum's
measured latency (above 1: the optimiser's mixed plan was faster on the machine); the same from the
predictions beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

PAPER = ("lia_(0,0,0,0,0,0)", "lia_(1,1,1,1,1,1)", "lia_(0,1,1,0,0,0)")


OPTIMUM = "optimal"  # the plan as the points file asks for it (plan_spec); lia validate labels it "optimum"


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Rows keyed by ``plan_spec`` (what the points file asked for): a plan reused from an identical one keeps
    that plan's ``plan_label`` (all-resident plans are the same whatever their policy)."""
    ok = results[results["status"] == "ran"] if "status" in results.columns else results
    rows = []
    for (batch, input_len), part in ok.groupby(["batch", "input_len"]):
        by = part.set_index("plan_spec")
        if OPTIMUM not in by.index:
            continue
        row = {
            "batch": int(batch),
            "input_len": int(input_len),
            "optimum_decode_policy": by.loc[OPTIMUM, "plan_decode"],
            "optimum_resident_layers": int(by.loc[OPTIMUM, "gpu_resident_layers"]),
            "optimum_measured_latency_s": float(by.loc[OPTIMUM, "measured_latency_s"]),
            "optimum_predicted_latency_s": float(by.loc[OPTIMUM, "predicted_latency_s"]),
        }
        paper_meas, paper_pred = {}, {}
        for label in PAPER:
            if label in by.index:
                paper_meas[label] = float(by.loc[label, "measured_latency_s"])
                paper_pred[label] = float(by.loc[label, "predicted_latency_s"])
            row[f"{label}_measured_latency_s"] = paper_meas.get(label)
        if paper_meas:
            best = min(paper_meas, key=paper_meas.get)
            row["best_paper_policy_measured"] = best
            row["speedup_measured"] = paper_meas[best] / row["optimum_measured_latency_s"]
            row["speedup_predicted"] = min(paper_pred.values()) / row["optimum_predicted_latency_s"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame):
    import numpy as np

    from studies.plotting import ONE_COLUMN_IN, figure

    fig, axes = figure(1, 1, ONE_COLUMN_IN, 2.4)
    ax = axes[0][0]
    labels = [f"B={b}\nL={n}" for b, n in zip(table["batch"], table["input_len"])]
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["speedup_measured"], 0.4, label="measured", color="#1b7837")
    ax.bar(x + 0.2, table["speedup_predicted"], 0.4, label="predicted", color="#aaaaaa")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels)
    ax.set_ylabel("optimum's speedup over\nthe best paper policy")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--out", default=".")
    parser.add_argument("--force", action="store_true", help="replace an existing measured-policy-map.csv")
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.exists():
        print(f"error: {path}: no such file -- run studies/measured/run_policy_map.sh first", file=sys.stderr)
        return 2
    out = Path(args.out)
    if (out / "measured-policy-map.csv").exists() and not args.force:
        print(
            f"error: --out: '{out / 'measured-policy-map.csv'}' exists -- pass --force to replace it", file=sys.stderr
        )
        return 2
    table = summarise(pd.read_csv(path))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "measured-policy-map.csv", index=False, float_format="%.6g")
    if len(table):
        from studies.output import save_figure

        save_figure(plot(table), out / "measured-policy-map")
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
