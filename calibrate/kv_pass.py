"""The KV-pass factor of each attention kernel, from a calibration's raw CSV.

    python -m calibrate.kv_pass PROFILE.yaml RAW.csv [--write]

A decode attention kernel (q = 1) is a batched GEMV: its time is the KV cache it reads over the memory
bandwidth, times the passes the kernel makes over it (operand copies, transposes, a separate softmax).
For each CPU ISA and the GPU, over the measured decode score/context rows whose K (or V) is at least
MIN_KV_BYTES (well past the caches):

    kv_pass_factor = median over the rows of (time - op_overhead) x bandwidth / KV bytes,   at least 1

with the profile's bandwidth (CPU: min(cpu.memory_read_gbps, ddr.read_gbps); GPU: gpu.hbm_gbps) and op
overhead. Without --write it prints the factors and the rows; with --write it sets them in the profile,
with the source saying so.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
import yaml

from lia_model.units import BYTES_PER_S_PER_GBPS, S_PER_US

MIN_KV_BYTES = 200e6
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def kv_bytes(row: pd.Series) -> float:
    """K (or V) one decode score (or context) reads: batch x context x heads x head_dim x dtype bytes."""
    return float(row["batch"] * row["s"] * row["heads"] * row["head_dim"] * DTYPE_BYTES[row["dtype"]])


def factors(profile: dict, rows: pd.DataFrame) -> dict[str, tuple[float, list[float]]]:
    """{"cpu.<isa>" or "gpu": (factor, per-row ratios)} for every kernel with qualifying rows."""
    cpu, gpu, ddr = profile["cpu"], profile["gpu"], profile["ddr"]
    decode = rows[rows["family"].isin(["cpu_attention", "gpu_attention"]) & (rows["q"] == 1) & rows["time_s"].notna()]
    out: dict[str, tuple[float, list[float]]] = {}
    groups = [("gpu", decode[decode["family"] == "gpu_attention"], gpu["hbm_gbps"], gpu["op_overhead_us"])]
    cpu_bw = min(cpu["memory_read_gbps"], ddr["read_gbps"])
    for isa in cpu["isa"]:
        groups.append(
            (
                f"cpu.{isa}",
                decode[(decode["family"] == "cpu_attention") & (decode["isa"] == isa)],
                cpu_bw,
                cpu["op_overhead_us"],
            )
        )
    for key, part, gbps, overhead_us in groups:
        ratios = [
            (r["time_s"] - overhead_us * S_PER_US) * gbps * BYTES_PER_S_PER_GBPS / kv_bytes(r)
            for _, r in part.iterrows()
            if kv_bytes(r) >= MIN_KV_BYTES
        ]
        if ratios:
            out[key] = (max(1.0, round(statistics.median(ratios), 3)), ratios)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("csv")
    parser.add_argument("--write", action="store_true", help="Set the factors in the profile file.")
    args = parser.parse_args()
    path = Path(args.profile)
    profile = yaml.safe_load(path.read_text())
    found = factors(profile, pd.read_csv(args.csv))
    for key, (factor, ratios) in found.items():
        print(
            f"{key}: kv_pass_factor {factor} (median of {len(ratios)} rows: "
            f"{', '.join(f'{x:.3f}' for x in sorted(ratios))})"
        )
        if not args.write:
            continue
        note = (
            f"calibrated: median over {len(ratios)} decode attention rows of the raw CSV with K or V >= "
            f"{MIN_KV_BYTES / 1e6:.0f} MB of (time - op overhead) x bandwidth / KV bytes, by python -m "
            "calibrate.kv_pass"
        )
        if key == "gpu":
            profile["gpu"]["kv_pass_factor"] = factor
            profile["gpu"]["source"]["kv_pass_factor"] = note
        else:
            isa = key.split(".", 1)[1]
            profile["cpu"]["isa"][isa]["kv_pass_factor"] = factor
            profile["cpu"]["source"][f"isa.{isa}.kv_pass_factor"] = note
    if args.write:
        path.write_text(yaml.safe_dump(profile, sort_keys=False, width=120))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
