"""Compare two calibrations: ``python -m calibrate.compare A B [--threshold 0.05]``.

A and B are profiles (.yaml) or raw CSVs. Prints a markdown table of the headline figures (from the raw
CSVs, see ``calibrate.headline``) and, for profiles, of the profile's own scalar figures (per-core peaks,
bandwidths, overheads), each with the relative difference (B - A) / A, and flags those beyond the threshold
(the issue's stability criterion is 5%). Exit status 0; 1 with ``--strict`` when a figure is beyond it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from calibrate.headline import figures, load_rows

PROFILE_FIELDS = (
    "cpu.memory_read_gbps",
    "cpu.op_overhead_us",
    "ddr.read_gbps",
    "gpu.hbm_gbps",
    "gpu.bf16_peak_tflops",
    "gpu.op_overhead_us",
    "gpu.reserved_gib",
    "link.h2d_gbps",
    "link.d2h_gbps",
    "link.pageable_h2d_gbps",
    "link.pageable_d2h_gbps",
    "link.transfer_latency_us",
)


def profile_figures(path: Path) -> dict[str, Optional[float]]:
    from lia_model.profiles import load_system

    spec = load_system(str(path)).model_dump(mode="json")
    out: dict[str, Optional[float]] = {}
    for isa, isa_spec in spec["cpu"]["isa"].items():
        out[f"cpu.isa.{isa}.per_core_tflops"] = isa_spec["per_core_tflops"] if isa_spec["present"] else None
    for dotted in PROFILE_FIELDS:
        node: Any = spec
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[dotted] = float(node) if isinstance(node, (int, float)) else None
    return out


def compare(a: Path, b: Path, threshold: float) -> tuple[str, int]:
    """The markdown report and how many figures differ by more than ``threshold``."""
    pairs: list[tuple[str, Optional[float], Optional[float]]] = []
    fa, fb = figures(load_rows(a)), figures(load_rows(b))
    pairs += [(k, fa[k][0], fb.get(k, (None,))[0]) for k in fa]
    if a.suffix in (".yaml", ".yml") and b.suffix in (".yaml", ".yml"):
        pa, pb = profile_figures(a), profile_figures(b)
        pairs += [(k, pa[k], pb.get(k)) for k in pa]
    lines = [f"A = {a}", f"B = {b}", "", "| figure | A | B | (B - A) / A | |", "|---|---:|---:|---:|---|"]
    beyond = 0
    for name, va, vb in pairs:
        if va is None or vb is None or va == 0:
            lines.append(f"| {name} | {_f(va)} | {_f(vb)} | n/a | |")
            continue
        rel = (vb - va) / va
        flag = f"beyond {100 * threshold:.0f}%" if abs(rel) > threshold else ""
        beyond += bool(flag)
        lines.append(f"| {name} | {_f(va)} | {_f(vb)} | {100 * rel:+.1f}% | {flag} |")
    compared = sum(1 for _, va, vb in pairs if va and vb)
    lines += ["", f"{compared} figures compared, {beyond} differ by more than {100 * threshold:.0f}%"]
    return "\n".join(lines), beyond


def _f(x: Optional[float]) -> str:
    return "n/m" if x is None else f"{x:.4g}"


def main(argv: Optional[list[str]] = None) -> int:
    from lia_model.errors import LiaInputError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure differs beyond the threshold")
    args = parser.parse_args(argv)
    try:
        report, beyond = compare(args.a, args.b, args.threshold)
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 1 if args.strict and beyond else 0


if __name__ == "__main__":
    sys.exit(main())
