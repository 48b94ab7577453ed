"""cost: cost per million generated tokens, single-GPU servers with the LIA optimum vs an 8-GPU DGX-A100.

A single-GPU machine runs the optimiser's throughput objective (it picks the batch); the DGX-A100 runs the
tensor-parallel model of studies/tensor_parallel.py (studies/dgx_a100.yaml), choosing its batch the same
way. Prices, power and amortisation come from studies/prices.yaml: cost per hour = price / (3 years) +
power x PUE x electricity price; cost per million tokens = cost per hour / (tokens/s x 3600) x 1e6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from studies import inputs
from studies.framework import Row, Study
from studies.optimum import optimum, plan_fields
from studies.prices import load_prices
from studies.tensor_parallel import best_throughput, load_node

DGX = "dgx-a100"


@dataclass(frozen=True)
class Grid:
    machines: tuple[str, ...]  # system profiles, and "dgx-a100" for the tensor-parallel node
    models: tuple[str, ...]
    lengths: tuple[tuple[int, int], ...]


FULL = Grid(
    machines=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100", DGX),
    models=("opt-30b", "opt-66b", "opt-175b"),
    lengths=((256, 32), (1792, 256)),
)
REDUCED = Grid(machines=("spr-h100", DGX), models=("opt-30b",), lengths=((256, 32),))


@dataclass(frozen=True)
class Point:
    machine: str
    model: str
    input_len: int
    output_len: int


def points(grid: Grid) -> list[Point]:
    return [Point(m, mo, li, lo) for m in grid.machines for mo in grid.models for (li, lo) in grid.lengths]


def run(point: Point) -> list[Row]:
    prices = load_prices()
    model = inputs.model(point.model)
    row: Row = {
        "machine": point.machine,
        "model": point.model,
        "input_len": point.input_len,
        "output_len": point.output_len,
    }
    if point.machine == DGX:
        node = load_node()
        pred = best_throughput(node, model, point.input_len, point.output_len)
        row.update(
            {
                "execution": f"tensor parallel over {node.gpus} GPUs",
                "gpus": node.gpus,
                "batch": pred.workload.batch if pred else None,
                "feasible": pred is not None,
                "latency_s": pred.latency_s if pred else None,
                "tpot_mean_s": pred.tpot_mean_s if pred else None,
                "throughput_tokens_per_s": pred.throughput_tokens_per_s if pred else None,
                "prefill_policy": None,
                "decode_policy": None,
                "gpu_resident_layers": None,
            }
        )
    else:
        system = inputs.system(point.machine)
        best = optimum(system, model, inputs.workload(point.model, 1, point.input_len, point.output_len), "throughput")
        pf = plan_fields(best.plan if best else None)
        row.update(
            {
                "execution": "LIA optimum (CPU + 1 GPU)",
                "gpus": 1,
                "batch": best.workload.batch if best else None,
                "feasible": best is not None,
                "latency_s": best.prediction.latency_s if best else None,
                "tpot_mean_s": best.prediction.tpot_mean_s if best else None,
                "throughput_tokens_per_s": best.prediction.throughput_tokens_per_s if best else None,
                "prefill_policy": pf["prefill_policy"],
                "decode_policy": pf["decode_policy"],
                "gpu_resident_layers": pf["gpu_resident_layers"],
            }
        )
    tput = row["throughput_tokens_per_s"]
    row.update(
        {
            "capex_usd": prices.capex_usd(point.machine),
            "power_w": prices.power_w(point.machine),
            "cost_per_hour_usd": prices.cost_per_hour_usd(point.machine),
            "usd_per_million_tokens": prices.usd_per_million_tokens(point.machine, tput) if tput else None,
        }
    )
    return [row]


COLUMNS = (
    "machine",
    "model",
    "input_len",
    "output_len",
    "execution",
    "gpus",
    "batch",
    "feasible",
    "latency_s",
    "tpot_mean_s",
    "throughput_tokens_per_s",
    "prefill_policy",
    "decode_policy",
    "gpu_resident_layers",
    "capex_usd",
    "power_w",
    "cost_per_hour_usd",
    "usd_per_million_tokens",
)


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    from studies.plotting import figure, fmt_tokens_per_s

    grid = grid or FULL
    machines = [m for m in grid.machines if m in set(frame["machine"])] or sorted(frame["machine"].unique())
    models = [m for m in grid.models if m in set(frame["model"])] or sorted(frame["model"].unique())
    lengths = [
        lens for lens in grid.lengths if ((frame["input_len"] == lens[0]) & (frame["output_len"] == lens[1])).any()
    ]
    if not lengths:
        lengths = sorted({(int(a), int(b)) for a, b in zip(frame["input_len"], frame["output_len"])})
    fig, axes = figure(len(lengths), 2, 15, 4.3 * len(lengths) + 1.4)
    cmap = __import__("matplotlib").colormaps["tab10"]
    colors = {m: ("#333333" if m == DGX else cmap(k)) for k, m in enumerate(machines)}
    width = 0.8 / len(machines)
    prices = load_prices()
    for r, (li, lo) in enumerate(lengths):
        part = frame[(frame["input_len"] == li) & (frame["output_len"] == lo)].set_index(["machine", "model"])
        for c, (column, ylabel, fmt) in enumerate(
            (
                ("throughput_tokens_per_s", "best throughput (generated tokens/s, log)", fmt_tokens_per_s),
                ("usd_per_million_tokens", "cost (USD per million generated tokens, log)", lambda v: f"\\${v:.3g}"),
            )
        ):
            ax = axes[r][c]
            values_all = []
            for k, machine in enumerate(machines):
                xs = np.arange(len(models)) + (k - (len(machines) - 1) / 2) * width
                for x, model in zip(xs, models):
                    if (machine, model) not in part.index:
                        continue
                    rec = part.loc[(machine, model)]
                    if not bool(rec["feasible"]) or pd.isna(rec[column]):
                        ax.text(
                            x,
                            0.02,
                            "does not fit",
                            rotation=90,
                            ha="center",
                            va="bottom",
                            fontsize=7,
                            transform=ax.get_xaxis_transform(),
                            color="#666666",
                        )
                        continue
                    v = float(rec[column])
                    values_all.append(v)
                    ax.bar(
                        x,
                        v,
                        width * 0.92,
                        color=colors[machine],
                        hatch="//" if machine == DGX else None,
                        edgecolor="white",
                    )
                    label = fmt(v) + (f"\nB={int(rec['batch'])}" if c == 0 else "")
                    ax.text(x, v * 1.08, label, ha="center", va="bottom", fontsize=6.3)
            ax.set_yscale("log")
            if values_all:
                ax.set_ylim(min(values_all) / 3, max(values_all) * 6)
            ax.set_xticks(range(len(models)), [m.upper() for m in models])
            ax.set_ylabel(ylabel)
            ax.grid(axis="x", visible=False)
            ax.set_title(
                f"L_in = {li}, L_out = {lo}: {'throughput' if c == 0 else 'cost per million tokens'}", fontsize=9.5
            )
    from matplotlib.patches import Patch

    def legend_label(m: str) -> str:
        where = "8 x A100 80 GB, tensor parallel" if m == DGX else "LIA optimum, CPU + 1 GPU"
        # "\\$": a plain dollar sign, not matplotlib's mathtext delimiter
        return (
            f"{m} ({where}): \\${prices.capex_usd(m) / 1000:,.0f}k, {prices.power_w(m) / 1000:.2f} kW, "
            f"\\${prices.cost_per_hour_usd(m):.2f}/h"
        )

    handles = [
        Patch(facecolor=colors[m], hatch="//" if m == DGX else None, edgecolor="white", label=legend_label(m))
        for m in machines
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        f"Cost per token: single-GPU servers running the LIA optimum vs a DGX-A100 with tensor parallelism "
        f"(prices in studies/prices.yaml, {prices.amortisation_years:g}-year amortisation, "
        f"{prices.electricity_usd_per_kwh:g} USD/kWh, PUE {prices.pue:g}, busy 100% of the time)",
        fontsize=9.5,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return fig


STUDY = Study(
    name="cost",
    title="Cost per million tokens: single-GPU LIA servers vs an 8-GPU DGX-A100",
    description="Best throughput and cost per million generated tokens of the single-GPU servers running the "
    "optimum against a DGX-A100 running tensor parallelism, from the prices in studies/prices.yaml.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("machine", "model", "input_len", "output_len"),
    columns=COLUMNS,
)
