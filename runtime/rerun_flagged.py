"""A points file that re-runs the flagged points of validation results (issue 10, measurement rigour: "a point
whose spread exceeds 5% is re-run or flagged").

    python -m runtime.rerun_flagged --from-csv runtime/validation/results.csv --out FILE.yaml
        [--select flagged|before-wide-pitched] [--parts 2 --part 1] [--force]

Every point that ran with ``spread_flag`` set (the spread of its repeated latencies above 5%) becomes an inline
plan of its group, with the plan it ran (``plan_json``) and the label of its point id, so its id (``group/label``)
is the same and ``lia validate --from-csv`` keeps the newest measurement. Nothing is chosen by its error: every flagged point
is listed. ``--select before-wide-pitched`` lists instead every point whose prefill writes a GPU qkv's new K/V
back for CPU attention and that ran on a runtime before the wide rows' pitched write-back (``kv_writeback`` does
not name ``PITCHED_FULL_RATE_ROW_BYTES``; runtime/kvstore.py, commit 6010524): the runtime changed under them.
``--parts K --part I`` splits the groups into K files of about equal measured wall time (one device command each),
smallest groups first.

    python -m runtime.rerun_flagged --relabel RERUN.csv --against ORIGINAL.csv --out RELABELLED.csv

gives each row of a re-run the point id and label of the original point of its group that ran the same plan
(an optimum run as ``optimal`` is labelled ``optimum`` in its plan, and the first re-runs, 2026-12-01, took that
label). The measurements and the plan spec (an inline plan) are kept as they ran.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml

from runtime.kvstore import PITCHED_FULL_RATE_ROW_BYTES
from runtime.report import is_true

GROUP_KEYS = ("model", "num_layers", "batch", "input_len", "output_len", "gpu_memory_gib")
OPTIONAL_GROUP_KEYS = ("weight_dtype",)  # absent in results written before the precision work


SELECTIONS = ("flagged", "before-wide-pitched")


def _selected(results: pd.DataFrame, select: str) -> pd.Series:
    """The rows ``select`` lists: flagged (latency spread above 5%), or before-wide-pitched (a GPU qkv in prefill
    whose K/V CPU attention reads, run before the runtime wrote wide K/V rows back pitched)."""
    if select == "flagged":
        return is_true(results["spread_flag"])
    cpu_attention = (results["plan_prefill_attn_score_device"] == "cpu") | (
        results["plan_prefill_attn_context_device"] == "cpu"
    )
    wide_rule = results["kv_writeback"].fillna("").astype(str).str.contains(f"{PITCHED_FULL_RATE_ROW_BYTES} B")
    return (results["plan_prefill_qkv_device"] == "gpu") & cpu_attention & ~wide_rule


_SELECT_COLUMNS = {
    "flagged": ("spread_flag",),
    "before-wide-pitched": (
        "plan_prefill_qkv_device",
        "plan_prefill_attn_score_device",
        "plan_prefill_attn_context_device",
        "kv_writeback",
    ),
}


def flagged_groups(results: pd.DataFrame, select: str = "flagged") -> list[dict]:
    """One points-file group per workload group with points ``select`` lists (default: the flagged ones), in
    increasing measured wall time."""
    if select not in SELECTIONS:
        raise ValueError(f"unknown selection {select!r}: use one of {', '.join(SELECTIONS)}")
    needed = ("group_id", "status", "plan_json", "plan_label", *_SELECT_COLUMNS[select], *GROUP_KEYS)
    missing = [c for c in needed if c not in results]
    if missing:
        raise ValueError(f"the results CSV lacks the columns {', '.join(missing)}")
    ran = results[(results["status"] == "ran") & _selected(results, select)]
    groups = []
    for gid, rows in ran.groupby("group_id", sort=False):
        first = rows.iloc[0]
        plans = []
        for _, r in rows.iterrows():
            plan = json.loads(r["plan_json"])
            plan["label"] = str(r["point_id"])[len(str(gid)) + 1 :] if "point_id" in r else r["plan_label"]
            plans.append(plan)
        group = {"id": gid}
        for key in GROUP_KEYS:
            value = first[key]
            if not (isinstance(value, float) and math.isnan(value)):
                group[key] = value.item() if hasattr(value, "item") else value
        for key in OPTIONAL_GROUP_KEYS:
            value = first.get(key)
            if isinstance(value, str) and value:
                group[key] = value
        group["plans"] = plans
        group["_wall_s"] = float(rows["point_wall_s"].fillna(0).sum()) if "point_wall_s" in rows else 0.0
        groups.append(group)
    return sorted(groups, key=lambda g: g["_wall_s"])


def split(groups: list[dict], parts: int) -> list[list[dict]]:
    """``parts`` lists of about equal wall time: each group to the part with the least so far (largest first)."""
    out: list[list[dict]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for g in sorted(groups, key=lambda g: -g["_wall_s"]):
        k = load.index(min(load))
        out[k].append(g)
        load[k] += g["_wall_s"]
    return [sorted(p, key=lambda g: g["_wall_s"]) for p in out]


def _same_plan(a: str, b: str) -> bool:
    """Two plan JSONs that differ at most in their label."""
    x, y = json.loads(a), json.loads(b)
    x.pop("label", None)
    y.pop("label", None)
    return x == y


def relabel(rerun: pd.DataFrame, original: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``rerun`` with each row's point id and label taken from the original point of its group with the same plan
    (rows with no such point, or with several, stay as they are). Returns the table and the rows changed."""
    out = rerun.copy()
    changed = 0
    for i, r in rerun.iterrows():
        same = original[(original["group_id"] == r["group_id"]) & original["plan_json"].notna()]
        hits = same[[_same_plan(str(p), str(r["plan_json"])) for p in same["plan_json"]]]
        ids = hits["point_id"].unique()
        if len(ids) == 1 and ids[0] != r["point_id"]:
            out.loc[i, "point_id"] = ids[0]
            out.loc[i, "plan_label"] = hits["plan_label"].iloc[0]
            changed += 1
    return out, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from-csv", type=Path, help="validation results (merged results.csv)")
    ap.add_argument("--relabel", type=Path, help="results of a re-run: write them with the original point ids")
    ap.add_argument("--against", type=Path, help="with --relabel: the results the re-run repeated")
    ap.add_argument("--out", required=True, type=Path, help="the points .yaml (or with --relabel the .csv) to write")
    ap.add_argument("--select", choices=SELECTIONS, default="flagged", help="which points to list (default: flagged)")
    ap.add_argument("--parts", type=int, default=1, help="split the groups into this many files")
    ap.add_argument("--part", type=int, default=1, help="which of the --parts files to write (1-based)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.force:
        print(f"error: --out: '{args.out}' exists -- pass --force to replace it", file=sys.stderr)
        return 2
    if args.relabel:
        for flag, path in (("--relabel", args.relabel), ("--against", args.against)):
            if path is None or not path.is_file():
                print(f"error: {flag}: '{path}' is not a file -- give a validation results.csv", file=sys.stderr)
                return 2
        try:
            table, changed = relabel(pd.read_csv(args.relabel), pd.read_csv(args.against))
        except (ValueError, KeyError, pd.errors.ParserError) as err:
            print(
                f"error: --relabel/--against: cannot read them as validation results ({err}) -- give two results.csv",
                file=sys.stderr,
            )
            return 2
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}: {changed} of {len(table)} rows took their original point id")
        return 0
    if args.from_csv is None or not args.from_csv.is_file():
        print(f"error: --from-csv: '{args.from_csv}' is not a file -- give a validation results.csv", file=sys.stderr)
        return 2
    if not (1 <= args.part <= args.parts):
        print(f"error: --part must be 1 .. --parts ({args.parts}), got {args.part}", file=sys.stderr)
        return 2
    try:
        groups = flagged_groups(pd.read_csv(args.from_csv), args.select)
    except (ValueError, pd.errors.ParserError) as err:
        print(f"error: --from-csv: {err}", file=sys.stderr)
        return 2
    chosen = split(groups, args.parts)[args.part - 1]
    wall = sum(g.pop("_wall_s") for g in chosen)
    points = sum(len(g["plans"]) for g in chosen)
    what = {
        "flagged": "the flagged points (latency spread above 5%)",
        "before-wide-pitched": "the points whose prefill writes a GPU qkv's K/V back for CPU attention, measured "
        "before the runtime wrote wide rows back pitched",
    }[args.select]
    doc = {
        "description": (
            f"Re-run, from {args.from_csv}, of {what}: part {args.part} of "
            f"{args.parts}: {points} points in {len(chosen)} groups, {wall:.0f} s of measured wall time before. "
            "Written by python -m runtime.rerun_flagged; nothing is chosen by its error."
        ),
        "groups": chosen,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    print(f"wrote {args.out}: {points} points in {len(chosen)} groups ({wall:.0f} s measured before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
