"""precision: the optimum per weight precision (issue 12): latency at B = 1 and throughput at the best batch, their
speedup over bf16 weights, and the cost per million tokens.

For each system, model and (L_in, L_out), two scenarios (as the e2e study's):
  latency_b1            latency of one sequence; the optimiser's latency objective
  throughput_max_batch  the optimiser's throughput objective (it picks the batch)
and each weight precision of the grid (lia_model.precision: bf16, int8 per output channel, int4 in groups of 128,
fp8_e4m3 per output channel; KV cache bf16). The optimiser places sublayers for the precision; it does not choose
it. A precision the system cannot run (fp8 without fp8 tensor cores: an A100) is a row with ``refused`` saying
why, and no numbers. ``speedup_vs_bf16``: bf16's latency over this one's, or this one's throughput over bf16's.
``batch_gap_bound``: how far the throughput objective's batch search is from proving its batch the best (0: proven;
empty: not proven, e.g. on calibrated tables; lia_model.optimizer.batch.search_batch).
``usd_per_million_tokens``: the machine's cost per hour (studies/prices.yaml, as the cost study) over the tokens
it generates at that throughput (throughput scenario only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from lia_model.errors import LiaInputError
from lia_model.precision import make_precision
from lia_model.workload import make_workload
from studies import inputs
from studies.framework import Row, Study
from studies.optimum import (
    PLAN_COLUMNS,
    PREDICTION_COLUMNS,
    SCENARIO_COLUMNS,
    optimum,
    plan_fields,
    prediction_fields,
    times_better,
)
from studies.prices import load_prices

SCENARIOS = ("latency_b1", "throughput_max_batch")
METRIC = {"latency_b1": "latency_s", "throughput_max_batch": "throughput_tokens_per_s"}
PRECISIONS = ("bf16", "int8", "int4", "fp8_e4m3")


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]
    models: tuple[str, ...]
    lengths: tuple[tuple[int, int], ...]  # (L_in, L_out)
    precisions: tuple[str, ...] = field(default=PRECISIONS, metadata={"choices": PRECISIONS})
    scenarios: tuple[str, ...] = field(default=SCENARIOS, metadata={"choices": SCENARIOS})


FULL = Grid(systems=("spr-a100", "gnr-h100"), models=("opt-175b", "llama-3.1-70b"), lengths=((256, 32),))
REDUCED = Grid(systems=("gnr-h100",), models=("llama-3.1-70b",), lengths=((256, 32),), scenarios=("latency_b1",))


@dataclass(frozen=True)
class Point:
    system: str
    model: str
    input_len: int
    output_len: int
    scenario: str
    precisions: tuple[str, ...]


def points(grid: Grid) -> list[Point]:
    return [
        Point(s, m, li, lo, sc, tuple(grid.precisions))
        for s in grid.systems
        for m in grid.models
        for (li, lo) in grid.lengths
        for sc in grid.scenarios
    ]


def run(point: Point) -> list[Row]:
    """One row per precision: the optimum (or why there is none), and its speedup over the bf16 row."""
    system, model = inputs.system(point.system), inputs.model(point.model)
    objective = "throughput" if point.scenario == "throughput_max_batch" else "latency"
    prices = load_prices()
    rows = []
    for dtype in point.precisions:
        precision = make_precision(dtype)
        workload = make_workload(1, point.input_len, point.output_len, model, precision)
        refused = None
        try:
            best = optimum(system, model, workload, objective)
        except LiaInputError as err:  # the system cannot run (or the model cannot price) this precision
            best, refused = None, str(err)
        fields = prediction_fields(best.prediction if best else None)
        tput = fields["throughput_tokens_per_s"]
        rows.append(
            {
                "system": point.system,
                "model": point.model,
                "input_len": point.input_len,
                "output_len": point.output_len,
                "scenario": point.scenario,
                "metric": METRIC[point.scenario],
                "weight_dtype": dtype,
                "precision": precision.label(),
                **fields,
                "refused": refused,
                "batch": best.workload.batch if best else None,
                "batch_gap_bound": best.batch_gap_bound if best and objective == "throughput" else None,
                "value": fields[METRIC[point.scenario]],
                "speedup_vs_bf16": None,
                "usd_per_million_tokens": (
                    prices.usd_per_million_tokens(point.system, tput)
                    if tput and point.scenario == "throughput_max_batch"
                    else None
                ),
                **plan_fields(best.plan if best else None),
            }
        )
    base = next((r["value"] for r in rows if r["weight_dtype"] == "bf16"), None)
    for r in rows:
        r["speedup_vs_bf16"] = times_better(r["value"], base, r["metric"])
    return rows


COLUMNS = (
    *SCENARIO_COLUMNS,
    "weight_dtype",
    "precision",
    *PREDICTION_COLUMNS,
    "refused",
    "batch",
    "batch_gap_bound",
    "value",
    "speedup_vs_bf16",
    "usd_per_million_tokens",
    *PLAN_COLUMNS,
)

SCENARIO_TITLES = {"latency_b1": "latency at B = 1", "throughput_max_batch": "throughput, best batch"}


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    """Per scenario (column), grouped bars: for each (system, model), the optimum's speedup over bf16 weights at
    each precision (log scale), its cost per million tokens above the throughput bars; "n/a" where the system
    cannot run the precision."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from studies.plotting import MIN_FONT_PT, TWO_COLUMN_IN, figure

    grid = grid or FULL
    scenarios = [s for s in SCENARIOS if s in set(frame["scenario"])]
    groups = list(dict.fromkeys(zip(frame["system"], frame["model"])))
    dtypes = [d for d in grid.precisions if d in set(frame["weight_dtype"])] or list(PRECISIONS)
    fig, axes = figure(1, len(scenarios), TWO_COLUMN_IN, 3.2, layout="constrained")
    colors = {"bf16": "#8c8c8c", "int8": "#4c72b0", "int4": "#55a868", "fp8_e4m3": "#dd8452"}
    width = 0.8 / len(dtypes)
    top = max(2.0, float(pd.to_numeric(frame["speedup_vs_bf16"], errors="coerce").max(skipna=True)) * 1.6)
    for c, scenario in enumerate(scenarios):
        ax = axes[0][c]
        part = frame[frame["scenario"] == scenario]
        for j, (system, model) in enumerate(groups):
            for k, dtype in enumerate(dtypes):
                rows = part[(part["system"] == system) & (part["model"] == model) & (part["weight_dtype"] == dtype)]
                x = j + (k - (len(dtypes) - 1) / 2) * width
                if rows.empty or pd.isna(rows["speedup_vs_bf16"].iloc[0]):
                    ax.text(x, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=MIN_FONT_PT)
                    continue
                value = float(rows["speedup_vs_bf16"].iloc[0])
                ax.bar(x, value, width * 0.9, color=colors.get(dtype, "#8172b3"), label=dtype if j == 0 else None)
                usd = rows["usd_per_million_tokens"].iloc[0]
                if pd.notna(usd):
                    ax.text(x, value * 1.05, f"${float(usd):.2f}", rotation=90, ha="center", va="bottom", fontsize=5)
        ax.set_yscale("log")
        ax.set_ylim(0.5, top)
        ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50) if t <= top]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_yticklabels([f"{t:g}x" for t in ticks], fontsize=MIN_FONT_PT)
        ax.set_xticks(range(len(groups)), [f"{m}\n{s}" for s, m in groups], fontsize=MIN_FONT_PT)
        ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_title(SCENARIO_TITLES[scenario], fontsize=8)
        if c == 0:
            ax.set_ylabel("optimum's speedup over bf16 weights", fontsize=MIN_FONT_PT + 0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncol=len(dtypes), fontsize=MIN_FONT_PT, frameon=False)
    lengths = ", ".join(f"{li}/{lo}" for li, lo in frame[["input_len", "output_len"]].drop_duplicates().values)
    shown = (frame["scenario"] == "throughput_max_batch") & frame["feasible"].astype(bool)  # refused rows: no bar
    gaps = pd.to_numeric(frame.loc[shown, "batch_gap_bound"], errors="coerce")
    fig.get_layout_engine().set(rect=(0, 0.11, 1, 0.89))
    fig.text(
        0.01,
        0.0,
        f"Cost model, overlap mode, L_in/L_out {lengths}; KV cache bf16; int4 in groups of 128. n/a: the system "
        "cannot run that precision.\nAbove the throughput bars: USD per million tokens (studies/prices.yaml). "
        f"The batch search proved its batch the best at {int((gaps == 0).sum())} of {int(gaps.size)} throughput "
        f"bars;\nthe largest gap bound left is {100 * float(gaps.max(skipna=True) if gaps.notna().any() else 0):.1f}% "
        "(batch_gap_bound in figures/precision.csv).",
        fontsize=MIN_FONT_PT,
        ha="left",
        va="bottom",
    )
    return fig


STUDY = Study(
    name="precision",
    title="The optimum per weight precision: latency, throughput and cost against bf16",
    description="For OPT-175B and Llama-3.1-70B on spr-a100 and gnr-h100, the optimum's latency at B=1 and "
    "throughput at its best batch with bf16, int8, int4 and fp8 weights, as speedups over bf16 with the cost per "
    "million tokens.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("system", "model", "input_len", "output_len", "scenario", "weight_dtype"),
    columns=COLUMNS,
)
