"""Refit a calibrated profile's CPU and GPU tables from its raw CSV with the current fit rules.

    python -m calibrate.refit PROFILE.yaml RAW.csv [--out PROFILE.yaml]

Measurements are not repeated: the peaks, bandwidths and every measured time stay as they were; only the
derived numbers (the op overheads and the efficiency tables fitted around them) are recomputed, and their
sources say so. Used once on 2026-11-22, when the overhead rule changed from the mean to the smallest of the
repeats (calibrate/profile.py: overhead_seconds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from calibrate.fit import error_summary, fit_errors, fit_table, rounded
from calibrate.profile import _isa_points, _rows, overhead_seconds
from calibrate.records import read_csv
from lia_model.units import BYTES_PER_S_PER_GBPS, FLOPS_PER_TFLOPS, S_PER_US


def refit(profile: dict, rows: list[dict], note: str) -> dict:
    cpu, gpu, ddr = profile["cpu"], profile["gpu"], profile["ddr"]
    overhead = _rows(rows, family="cpu_overhead")
    if overhead:
        cpu["op_overhead_us"] = rounded(overhead_seconds(overhead) / S_PER_US, 4)
        cpu["source"]["op_overhead_us"] += f"; {note}"
    overhead_s = cpu["op_overhead_us"] * S_PER_US
    bandwidth = min(cpu["memory_read_gbps"], ddr["read_gbps"]) * BYTES_PER_S_PER_GBPS
    for isa, spec in cpu["isa"].items():
        if not spec.get("present"):
            continue
        lin_pts, att_pts, _, _ = _isa_points(rows, isa)
        peak = spec["per_core_tflops"] * cpu["cores"] * FLOPS_PER_TFLOPS
        for key, pts in (("matmul_efficiency", lin_pts), ("attention_efficiency", att_pts)):
            table = fit_table(pts, peak, bandwidth, overhead_s)
            spec[key] = [p.model_dump() for p in table]
            src = f"isa.{isa}.{key}"
            cpu["source"][src] = (
                cpu["source"].get(src, "").split(": median |error|")[0]
                + f": {error_summary(fit_errors(pts, table, peak, bandwidth, overhead_s))}; {note}"
            )
    g_overhead = _rows(rows, family="gpu_overhead")
    if g_overhead and "gpu_matmul" in {r.get("family") for r in rows}:
        gpu["op_overhead_us"] = rounded(overhead_seconds(g_overhead) / S_PER_US, 4)
        gpu["source"]["op_overhead_us"] += f"; {note}"
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("csv")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    profile = yaml.safe_load(Path(args.profile).read_text())
    rows = read_csv(Path(args.csv)).to_dict("records")
    note = f"refitted {time.strftime('%Y-%m-%d')} from the raw CSV by python -m calibrate.refit (overhead: smallest repeat)"
    out = Path(args.out or args.profile)
    out.write_text(yaml.safe_dump(refit(profile, rows, note), sort_keys=False, width=120))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
