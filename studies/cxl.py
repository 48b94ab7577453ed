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
    from studies.plotting import figure

    grid = grid or FULL
    bases = [s for s in grid.systems if s in set(frame["base_system"])] or sorted(frame["base_system"].unique())
    models = [m for m in grid.models if m in set(frame["model"])] or sorted(frame["model"].unique())
    table = summary(frame).set_index(["base_system", "model"])
    fig, axes = figure(len(models), len(bases), 4.1 * len(bases), 3.9 * len(models) + 0.9, sharey="row")
    # DDR only: a wide pale line; with CXL: a narrow dashed one on top (the two coincide where DDR suffices)
    styles = {False: ("#6baed6", "DDR only", "-", 3.2), True: ("#b2182b", "DDR + CXL", "--", 1.4)}
    for r, model in enumerate(models):
        for c, base in enumerate(bases):
            ax = axes[r][c]
            part = frame[(frame["base_system"] == base) & (frame["model"] == model)]
            for flag, (color, name, line, width) in styles.items():
                sub = part[part["cxl"] == flag]
                curve = sub[(sub["kind"] == "batch") & sub["feasible"].astype(bool)].sort_values("batch")
                ax.plot(
                    curve["batch"],
                    curve["throughput_tokens_per_s"],
                    line,
                    color=color,
                    linewidth=width,
                    label=f"{name}: optimum at each batch",
                )
                largest = sub[(sub["kind"] == "largest_batch") & sub["feasible"].astype(bool)]
                if len(largest):
                    ax.axvline(
                        largest["batch"].iloc[0],
                        color=color,
                        linestyle=":",
                        linewidth=1.6,
                        label=f"{name}: largest batch that fits",
                    )
                best = sub[(sub["kind"] == "best_throughput") & sub["feasible"].astype(bool)]
                if len(best):
                    ax.plot(
                        best["batch"],
                        best["throughput_tokens_per_s"],
                        "*",
                        color=color,
                        markersize=11,
                        markeredgecolor="black",
                        markeredgewidth=0.5,
                        label=f"{name}: optimiser's throughput objective",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch B (sequences)")
            if c == 0:
                ax.set_ylabel("throughput (generated tokens/s)")
            ax.set_title(f"{model.upper()} on {base} vs {base}-cxl", fontsize=9.5)
            key = (base, model)
            if key in table.index:
                rec = table.loc[key]
                lines = [
                    f"largest batch: {_int(rec['largest_batch_ddr_only'])} -> {_int(rec['largest_batch_with_cxl'])}"
                ]
                if rec["throughput_gain"] is not None and not pd.isna(rec["throughput_gain"]):
                    lines.append(f"best throughput: x{rec['throughput_gain']:.2f} with CXL")
                ax.text(
                    0.97,
                    0.04,
                    "\n".join(lines),
                    transform=ax.transAxes,
                    va="bottom",
                    ha="right",
                    fontsize=8,
                    bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#cccccc"},
                )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"CXL memory: throughput vs batch, L_in = {grid.input_len}, L_out = {grid.output_len} "
        "(two 128 GiB CXL expanders added to 512 GiB DDR5)",
        fontsize=10.5,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    return fig


def _int(value) -> str:
    return "none" if value is None or pd.isna(value) else f"{int(value)}"


STUDY = Study(
    name="cxl",
    title="Throughput vs batch with and without CXL",
    description="Throughput of the optimal plan vs batch for OPT-30B and OPT-66B on each system with and "
    "without CXL, with the largest batch that fits and the best-throughput gain CXL buys.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("base_system", "model", "cxl", "kind", "batch"),
    columns=COLUMNS,
)
