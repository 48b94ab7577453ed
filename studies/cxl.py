"""cxl: throughput vs batch with and without CXL memory, and what CXL's capacity buys.

Each system is paired with its -cxl variant (the same machine plus two 128 GiB CXL expanders). For each
pair, model and batch on a quarter-octave grid the optimiser's latency objective at that batch gives the
throughput (at a fixed batch the lowest latency is the highest throughput); batches where no plan fits
are rows with feasible = False. Two more rows per (system, model): ``largest_batch``, the largest batch
any plan fits (lia_model.optimizer.largest_feasible_batch) with its optimal throughput, and
``best_throughput``, the optimiser's throughput objective (it picks the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from studies import inputs
from studies.framework import Row, Study
from studies.optimum import PLAN_COLUMNS, PREDICTION_COLUMNS, optimum, plan_fields, prediction_fields
from studies.policy_map import log_grid


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]  # without CXL; each is paired with NAME-cxl
    models: tuple[str, ...]
    batches: tuple[int, ...]
    input_len: int
    output_len: int


FULL = Grid(
    systems=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100"),
    models=("opt-30b", "opt-66b"),
    batches=log_grid(1, 4096, 4),
    input_len=256,
    output_len=32,
)
REDUCED = Grid(systems=("spr-h100",), models=("opt-66b",), batches=(1, 64, 512, 1024), input_len=256, output_len=32)

KINDS = ("batch", "largest_batch", "best_throughput")


@dataclass(frozen=True)
class Point:
    system: str
    base_system: str
    model: str
    kind: str
    batch: int  # the batch of a "batch" point; 1 otherwise (the optimiser picks)
    input_len: int
    output_len: int


def points(grid: Grid) -> list[Point]:
    out: list[Point] = []
    for base in grid.systems:
        for name in (base, f"{base}-cxl"):
            for m in grid.models:
                out += [Point(name, base, m, "batch", b, grid.input_len, grid.output_len) for b in grid.batches]
                out += [
                    Point(name, base, m, kind, 1, grid.input_len, grid.output_len)
                    for kind in ("largest_batch", "best_throughput")
                ]
    return out


def run(point: Point) -> list[Row]:
    from lia_model.optimizer import largest_feasible_batch

    system, model = inputs.system(point.system), inputs.model(point.model)
    batch: Optional[int] = point.batch
    objective = "latency"
    if point.kind == "largest_batch":
        batch = largest_feasible_batch(system, model, point.input_len, point.output_len)
    elif point.kind == "best_throughput":
        objective = "throughput"
    best = None
    if batch is not None:
        best = optimum(system, model, inputs.workload(point.model, batch, point.input_len, point.output_len), objective)
    return [
        {
            "system": point.system,
            "base_system": point.base_system,
            "cxl": system.has_cxl,
            "model": point.model,
            "input_len": point.input_len,
            "output_len": point.output_len,
            "kind": point.kind,
            "batch": best.workload.batch if best else (batch if point.kind == "batch" else None),
            **prediction_fields(best.prediction if best else None),
            **plan_fields(best.plan if best else None),
        }
    ]


COLUMNS = (
    "system",
    "base_system",
    "cxl",
    "model",
    "input_len",
    "output_len",
    "kind",
    "batch",
    *PREDICTION_COLUMNS,
    *PLAN_COLUMNS,
)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (base system, model): largest batch and best throughput without and with CXL, and the gain."""
    out = []
    for (base, model), part in frame.groupby(["base_system", "model"], sort=True):
        rec = {"base_system": base, "model": model}
        for flag, tag in ((False, "ddr_only"), (True, "with_cxl")):
            sub = part[part["cxl"] == flag]
            largest = sub[sub["kind"] == "largest_batch"]
            best = sub[sub["kind"] == "best_throughput"]
            rec[f"largest_batch_{tag}"] = largest["batch"].iloc[0] if len(largest) else None
            rec[f"best_throughput_{tag}"] = best["throughput_tokens_per_s"].iloc[0] if len(best) else None
            rec[f"best_batch_{tag}"] = best["batch"].iloc[0] if len(best) else None
        a, b = rec["best_throughput_ddr_only"], rec["best_throughput_with_cxl"]
        rec["throughput_gain"] = (b / a) if a and b and not pd.isna(a) and not pd.isna(b) else None
        out.append(rec)
    return pd.DataFrame(out)


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    """Bars, two columns wide: per model (columns), the largest batch that fits (top row) and the best
    throughput the optimiser finds (bottom row) on each base system, DDR only beside DDR + CXL, with CXL's gain
    over each pair. The throughput-vs-batch curves behind the bars are in the CSV (kind = batch)."""
    import numpy as np

    from studies.plotting import TWO_COLUMN_IN, figure

    grid = grid or FULL
    bases = [s for s in grid.systems if s in set(frame["base_system"])] or sorted(frame["base_system"].unique())
    models = [m for m in grid.models if m in set(frame["model"])] or sorted(frame["model"].unique())
    table = summary(frame).set_index(["base_system", "model"])
    fig, axes = figure(2, len(models), TWO_COLUMN_IN, 4.4)
    colors = {"ddr_only": "#6baed6", "with_cxl": "#b2182b"}
    names = {"ddr_only": "DDR only (512 GiB)", "with_cxl": "DDR + CXL (512 + 2 x 128 GiB)"}
    rows = (
        ("largest_batch", "largest batch that fits\n(sequences)"),
        ("best_throughput", "best throughput\n(tokens/s)"),
    )
    x = np.arange(len(bases))
    width = 0.38
    for c, model in enumerate(models):
        for r, (metric, label) in enumerate(rows):
            ax = axes[r][c]
            top = 0.0
            for k, tag in enumerate(("ddr_only", "with_cxl")):
                values = [
                    float(table.loc[(b, model), f"{metric}_{tag}"])
                    if (b, model) in table.index and not pd.isna(table.loc[(b, model), f"{metric}_{tag}"])
                    else 0.0
                    for b in bases
                ]
                top = max(top, *values)
                ax.bar(x + (k - 0.5) * width, values, width, color=colors[tag], label=names[tag])
            for i, b in enumerate(bases):
                if (b, model) not in table.index:
                    continue
                a, w = table.loc[(b, model), f"{metric}_ddr_only"], table.loc[(b, model), f"{metric}_with_cxl"]
                if a and w and not pd.isna(a) and not pd.isna(w):
                    ax.text(x[i], max(a, w) * 1.02, f"x{w / a:.2f}", ha="center", va="bottom", fontsize=7)
            ax.set_ylim(0, top * 1.18 if top else 1)
            ax.set_xticks(x)
            ax.set_xticklabels(bases, rotation=0)
            ax.grid(axis="x", visible=False)
            if c == 0:
                ax.set_ylabel(label)
            if r == 0:
                ax.set_title(model.upper())
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(
        f"What two CXL expanders buy: the optimum at L_in = {grid.input_len}, L_out = {grid.output_len} "
        "(x = with CXL / DDR only)"
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return fig


def _int(value) -> str:
    return "none" if value is None or pd.isna(value) else f"{int(value)}"


STUDY = Study(
    name="cxl",
    title="Throughput vs batch with and without CXL",
    description="The largest batch that fits and the best throughput of the optimal plan for OPT-30B and OPT-66B "
    "on each system with and without CXL, as bars with CXL's gain (the throughput-vs-batch curves are in the CSV).",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("base_system", "model", "cxl", "kind", "batch"),
    columns=COLUMNS,
)
