"""The raw-measurement table: one row per measured point, one CSV for all families.

Columns carry their unit. ``time_s`` is the median per-call time of one run (after ``aggregate``: the mean
of the repeats' medians); ``time_s_min``/``time_s_max`` the fastest and slowest sample; ``time_s_repeats``
each repeat's median (``;``-separated) and ``spread_rel`` (max - min) / mean over the repeats. ``flops`` and
``bytes`` are what the call does at its own dtype (an fp32 weight is 4 bytes per element), ``tflops`` and
``gbps`` are those over ``time_s``. Rows of skipped or absent measurements keep their key columns and say
why in ``note``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterable

KEY_COLUMNS = (
    "family",
    "op",
    "label",
    "backend",
    "isa",
    "dtype",
    "tokens",
    "k",
    "n",
    "batch",
    "heads",
    "q",
    "s",
    "head_dim",
    "pinned",
    "numa_node",
    "size_bytes",
    "threads",
    "flops",
    "bytes",
)
VALUE_COLUMNS = ("time_s", "time_s_min", "time_s_max", "samples", "solo_time_s", "slowdown", "kernel_observed", "note")
DERIVED_COLUMNS = ("repeats", "time_s_repeats", "spread_rel", "tflops", "gbps", "pred_time_s", "fit_error_rel")
COLUMNS = KEY_COLUMNS + VALUE_COLUMNS + DERIVED_COLUMNS

FAMILIES = (
    "cpu_matmul",
    "cpu_attention",
    "cpu_overhead",
    "host_memory",
    "gpu_info",
    "gpu_matmul",
    "gpu_attention",
    "gpu_memory",
    "gpu_overhead",
    "pcie",
    "contention",
)


def row(family: str, op: str, **fields: Any) -> dict[str, Any]:
    """A raw row; unknown column names are a programming error."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown CSV columns {sorted(unknown)}")
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family}")
    return {"family": family, "op": op, **fields}


def timed_row(family: str, op: str, timing: Any, **fields: Any) -> dict[str, Any]:
    """A row from a ``timing.Timing``."""
    return row(
        family,
        op,
        time_s=timing.median_s,
        time_s_min=timing.min_s,
        time_s_max=timing.max_s,
        samples=timing.samples,
        **fields,
    )


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def aggregate(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the rows of N repeats: mean of the medians, spread over the repeats, derived rates."""
    merged: dict[tuple, list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            merged.setdefault(tuple(r.get(c) for c in KEY_COLUMNS), []).append(r)
    out = []
    for group in merged.values():
        first = group[0]
        res: dict[str, Any] = {c: first.get(c) for c in KEY_COLUMNS}
        times = [g["time_s"] for g in group if _present(g.get("time_s"))]
        if times:
            mean = statistics.fmean(times)
            res["time_s"] = mean
            res["time_s_min"] = min(g.get("time_s_min", g["time_s"]) for g in group if _present(g.get("time_s")))
            res["time_s_max"] = max(g.get("time_s_max", g["time_s"]) for g in group if _present(g.get("time_s")))
            res["samples"] = sum(int(g.get("samples") or 0) for g in group)
            res["time_s_repeats"] = ";".join(f"{t:.6g}" for t in times)
            res["spread_rel"] = (max(times) - min(times)) / mean if mean > 0 else 0.0
        res["repeats"] = len(times)
        for col in ("solo_time_s", "slowdown"):
            vals = [g[col] for g in group if _present(g.get(col))]
            if vals:
                res[col] = statistics.fmean(vals)
        for col in ("kernel_observed", "note"):
            vals = list(dict.fromkeys(str(g[col]) for g in group if _present(g.get(col)) and g[col] != ""))
            if vals:
                res[col] = " | ".join(vals)
        if times and res["time_s"] > 0:
            if _present(res.get("flops")) and res["flops"]:
                res["tflops"] = res["flops"] / res["time_s"] / 1e12
            if _present(res.get("bytes")) and res["bytes"]:
                res["gbps"] = res["bytes"] / res["time_s"] / 1e9
        out.append(res)
    return out


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for col in (
        "tokens",
        "k",
        "n",
        "batch",
        "heads",
        "q",
        "s",
        "head_dim",
        "numa_node",
        "size_bytes",
        "threads",
        "samples",
        "repeats",
    ):
        frame[col] = frame[col].astype("Int64")
    frame.to_csv(path, index=False, float_format="%.6g")


def read_csv(path: Path) -> "Any":
    import pandas as pd

    return pd.read_csv(path, keep_default_na=True)
