"""The headline figures of a calibration, as markdown tables, from its raw CSV.

``python -m calibrate.headline PROFILE_OR_CSV`` (a profile .yaml finds its CSV: same name beside it, or in
hwprofiles/calibration/ for a committed profile).

Tables:
1. GEMM throughput (TFLOPS) at OPT-30B fc1 (K = 7168, N = 28672) for 1, 16, 256 and 2048 tokens: AMX (the
   default bf16 path), AVX-512 bf16, their ratio, AVX-512 fp32, and the GPU.
2. Host-to-device and device-to-host bandwidth (GB/s), pinned and pageable, at 64 MiB and 1 GiB.
3. Contention: CPU GEMM / GEMV and pinned h2d copies, each alone and together, and the slowdown.
With repeats, each figure shows half the spread over the runs, ±(max - min) / (2 mean), in brackets;
"n/m" marks a figure not measured, with the reason below the table.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

from calibrate.shapes import HEADLINE_TOKENS, headline_shape

GEMM_SIZES = (64 << 20, 1 << 30)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def _fmt(value: Optional[float], spread: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "n/m"
    text = f"{value:.{digits}g}"
    if _num(spread) and spread > 0:
        text += f" (±{100 * spread / 2:.1f}%)"
    return text


def _find(rows: list[dict], **match: Any) -> Optional[dict]:
    for r in rows:
        if (
            all(r.get(k) == v for k, v in match.items())
            and _num(r.get("time_s"))
            and "ipex" not in str(r.get("backend"))
        ):
            return r
    return None


def _why(rows: list[dict], family: str, **match: Any) -> str:
    for r in rows:
        if (
            r.get("family") == family
            and all(r.get(k) == v for k, v in match.items())
            and isinstance(r.get("note"), str)
            and ("skipped" in r["note"] or "absent" in r["note"])
        ):
            return r["note"]
    return ""


def figures(rows: list[dict]) -> dict[str, tuple[Optional[float], Optional[float], str]]:
    """Headline figure name -> (value, spread over repeats, unit); None when not measured."""
    shape = headline_shape()
    out: dict[str, tuple[Optional[float], Optional[float], str]] = {}
    for tokens in HEADLINE_TOKENS:
        for key, family, isa in (
            ("amx_bf16", "cpu_matmul", "amx_bf16"),
            ("avx512_bf16", "cpu_matmul", "avx512_bf16"),
            ("avx512_fp32", "cpu_matmul", "avx512_fp32"),
            ("avx2_fp32", "cpu_matmul", "avx2_fp32"),
            ("gpu", "gpu_matmul", None),
        ):
            match = dict(family=family, label=shape.label, tokens=tokens)
            if isa:
                match["isa"] = isa
            r = _find(rows, **match)
            out[f"gemm {shape.label} {tokens} tokens {key} TFLOPS"] = (
                (r["flops"] / r["time_s"] / 1e12, r.get("spread_rel"), "TFLOPS") if r else (None, None, "TFLOPS")
            )
    nodes = sorted({int(r["numa_node"]) for r in rows if r.get("family") == "pcie" and _num(r.get("numa_node"))})
    for node in nodes or [0]:
        suffix = f" node {node}" if len(nodes) > 1 else ""
        for size in GEMM_SIZES:
            for op in ("h2d", "d2h"):
                for pinned in ("pinned", "pageable"):
                    r = _find(rows, family="pcie", op=op, pinned=pinned, size_bytes=size, numa_node=node)
                    out[f"{pinned} {op} {_size(size)}{suffix} GB/s"] = (
                        (r["bytes"] / r["time_s"] / 1e9, r.get("spread_rel"), "GB/s") if r else (None, None, "GB/s")
                    )
    for op in ("gemm_during_h2d", "h2d_during_gemm", "gemv_during_h2d", "h2d_during_gemv"):
        r = _find(rows, family="contention", op=op)
        out[f"contention {op} slowdown"] = (
            (r["slowdown"], r.get("spread_rel"), "x") if r and _num(r.get("slowdown")) else (None, None, "x")
        )
    return out


def _size(size: int) -> str:
    return f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


def headline_markdown(rows: list[dict]) -> str:
    shape = headline_shape()
    fig = figures(rows)
    lines = [
        f"GEMM throughput at {shape.label} (K = {shape.k}, N = {shape.n}), bf16 unless noted, TFLOPS:",
        "",
        "| tokens | AMX bf16 | AVX-512 bf16 | AMX / AVX-512 | AVX-512 fp32 | AVX2 fp32 | GPU bf16 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tokens in HEADLINE_TOKENS:
        get = {
            k: fig[f"gemm {shape.label} {tokens} tokens {k} TFLOPS"]
            for k in ("amx_bf16", "avx512_bf16", "avx512_fp32", "avx2_fp32", "gpu")
        }
        amx, avx = get["amx_bf16"][0], get["avx512_bf16"][0]
        ratio = f"{amx / avx:.2f}x" if amx and avx else "n/m"
        lines.append(
            f"| {tokens} | {_fmt(*get['amx_bf16'][:2])} | {_fmt(*get['avx512_bf16'][:2])} | {ratio} | "
            f"{_fmt(*get['avx512_fp32'][:2])} | {_fmt(*get['avx2_fp32'][:2])} | {_fmt(*get['gpu'][:2])} |"
        )
    reasons = []
    for key, family, isa in (
        ("amx_bf16", "cpu_matmul", "amx_bf16"),
        ("avx512_bf16", "cpu_matmul", "avx512_bf16"),
        ("avx512_fp32", "cpu_matmul", "avx512_fp32"),
        ("avx2_fp32", "cpu_matmul", "avx2_fp32"),
        ("gpu", "gpu_matmul", None),
    ):
        if key == "avx2_fp32" and not any(r.get("isa") == "avx2_fp32" for r in rows):
            continue  # measured only on CPUs without AVX-512
        missing = any(fig[f"gemm {shape.label} {t} tokens {key} TFLOPS"][0] is None for t in HEADLINE_TOKENS)
        why = _why(rows, family, **({"isa": isa} if isa else {}))
        if missing:
            reasons.append(f"{key}: {why or 'not in this run (a --quick run measures 1, 16 and 256 tokens)'}")
    lines += [""] + [f"- n/m {r}" for r in reasons] if reasons else []
    lines += [
        "",
        "PCIe copy bandwidth, GB/s:",
        "",
        "| size | pinned h2d | pageable h2d | pinned d2h | pageable d2h |",
        "|---|---:|---:|---:|---:|",
    ]
    keys = [k for k in fig if k.endswith("GB/s")]
    labels = list(dict.fromkeys(k.split(" ", 2)[2].rsplit(" GB/s", 1)[0] for k in keys))
    for label in labels:
        cells = [
            _fmt(*fig[f"{p} {o} {label} GB/s"][:2])
            for o, p in (("h2d", "pinned"), ("h2d", "pageable"), ("d2h", "pinned"), ("d2h", "pageable"))
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pcie_why = _why(rows, "pcie")
    if pcie_why:
        lines += ["", f"- n/m {pcie_why}"]
    lines += [
        "",
        "Contention (pinned h2d copies while the CPU runs a bf16 GEMM or GEMV on all cores):",
        "",
        "| what | alone | together | slowdown |",
        "|---|---:|---:|---:|",
    ]
    for op in ("gemm_during_h2d", "h2d_during_gemm", "gemv_during_h2d", "h2d_during_gemv"):
        r = _find(rows, family="contention", op=op)
        if r is None:
            lines.append(f"| {op.replace('_', ' ')} | n/m | n/m | n/m |")
            continue
        if op.startswith("h2d"):
            alone = f"{r['bytes'] / r['solo_time_s'] / 1e9:.3g} GB/s"
            together = f"{r['bytes'] / r['time_s'] / 1e9:.3g} GB/s"
        else:
            alone = f"{r['flops'] / r['solo_time_s'] / 1e12:.3g} TFLOPS"
            together = f"{r['flops'] / r['time_s'] / 1e12:.3g} TFLOPS"
        lines.append(
            f"| {op.replace('_', ' ')} ({r['label']}) | {alone} | {together} | "
            f"{_fmt(r['slowdown'], r.get('spread_rel'))}x |"
        )
    cont_why = _why(rows, "contention")
    if cont_why:
        lines += ["", f"- n/m {cont_why}"]
    return "\n".join(lines)


def csv_for(path: Path) -> Path:
    """The raw CSV of a profile or the CSV itself."""
    if path.suffix == ".csv":
        return path
    candidates = [path.with_suffix(".csv"), path.parent.parent / "calibration" / f"{path.stem}.csv"]
    for c in candidates:
        if c.exists():
            return c
    from lia_model.errors import LiaInputError

    raise LiaInputError(
        str(path),
        "no raw CSV found for this profile",
        f"looked for {', '.join(str(c) for c in candidates)}; give the CSV path instead",
    )


def load_rows(path: Path) -> list[dict]:
    from calibrate.records import read_csv
    from lia_model.errors import LiaInputError

    csv = csv_for(path)
    if not csv.exists():
        raise LiaInputError(str(csv), "no such file", "give a calibration CSV or profile .yaml")
    frame = read_csv(csv)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        for rec in frame.to_dict("records")
    ]


def main(argv: Optional[list[str]] = None) -> int:
    from lia_model.errors import LiaInputError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m calibrate.headline PROFILE.yaml|RAW.csv", file=sys.stderr)
        return 2
    try:
        print(headline_markdown(load_rows(Path(args[0]))))
    except LiaInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
