"""The runtime's linears in situ over what the cost model predicted for them, per device, phase, sublayer and token
count, from a validation results CSV (``lia validate`` or the merged summary's ``runtime/validation/results.csv``).

    python tools/insitu_over_table.py [RESULTS.csv] [--device gpu|cpu] [--phase prefill|decode]

For every point that ran, each linear sublayer placed on ``--device`` gives measured / predicted milliseconds (the
profiled runs' median over layers and steps against the profile's per-sublayer prediction); rows are the median and
quartiles of that ratio over points, by sublayer and token count (tokens per call: batch x prompt / minibatches in
prefill, batch in decode). A ratio below 1: the kernel ran faster in situ than its table says.
"""

from __future__ import annotations

import argparse
import sys

LINEARS = ("qkv", "out_proj", "fc1", "fc2")
BINS = (0, 64, 256, 600, 1100, 2100, 5000, 10**7)


def table(path: str, device: str, phase: str):
    import pandas as pd

    d = pd.read_csv(path, low_memory=False)
    d = d[d["status"] == "ran"]
    rows = []
    for sub in LINEARS:
        placed = d[d[f"plan_{phase}_{sub}_device"].astype(str).str.startswith(device)]
        for _, r in placed.iterrows():
            tokens = r["batch"] * r["input_len"] / r["prefill_minibatches"] if phase == "prefill" else r["batch"]
            pred, meas = r[f"predicted_{phase}_{sub}_ms"], r[f"measured_{phase}_{sub}_ms"]
            if pred > 0 and meas > 0:
                rows.append({"sublayer": sub, "tokens": tokens, "ratio": meas / pred})
    if not rows:
        return None
    t = pd.DataFrame(rows)
    t["tokens per call"] = pd.cut(t["tokens"], list(BINS))
    g = t.groupby(["tokens per call", "sublayer"], observed=True)["ratio"]
    out = g.describe()[["count", "25%", "50%", "75%"]].rename(columns={"50%": "median"})
    return out.reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="runtime/validation/results.csv")
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    parser.add_argument("--phase", default="prefill", choices=("prefill", "decode"))
    args = parser.parse_args(argv)
    try:
        out = table(args.results, args.device, args.phase)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {args.results}: {err}; give a validation results CSV", file=sys.stderr)
        return 2
    if out is None:
        print(f"no {args.device} linears in {args.phase} in {args.results}")
        return 0
    print(f"{args.device} {args.phase} linears, measured / predicted per point (median and quartiles over points):")
    print(out.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
