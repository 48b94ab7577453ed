"""e2e: the optimum against the baselines: latency at B = 1, throughput at B = 64 and at the largest batch.

For each system, model and (L_in, L_out) three scenarios:
  latency_b1            latency of one sequence (B = 1); the optimiser's latency objective
  throughput_b64        throughput at B = 64; at a fixed batch the lowest latency is the highest throughput
  throughput_max_batch  throughput with the batch chosen too: the optimiser's throughput objective (every
                        batch up to the largest any plan fits); FlexGen at the batch its own search picks
                        (gbs x num_gpu_batches), every other baseline at the largest batch its own plan fits.
Every baseline of lia_model.baselines is evaluated as its peer runs it (the figure shows FlexGen, IPEX and
GPU-only); a baseline that does not fit memory is a row with feasible = False and no numbers. ``speedup`` is
how many times better the optimum is (baseline latency / optimum latency, or optimum throughput / baseline
throughput); ``in_optimizer_space`` says whether the optimiser could have chosen the baseline's plan.
``flexgen_own_throughput_tokens_per_s`` is FlexGen's own cost model's prediction for its policy (flexgen rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from lia_model.baselines import BASELINE_LABELS, Baseline, baseline
from lia_model.memory import plan_fits
from lia_model.optimizer.infeasible import largest_feasible
from lia_model.plan import head_device
from lia_model.workload import Workload
from studies import inputs
from studies.framework import Row, Study
from studies.optimum import (
    PLAN_COLUMNS,
    PREDICTION_COLUMNS,
    SCENARIO_COLUMNS,
    in_optimizer_space,
    optimum,
    plan_fields,
    prediction_fields,
    throughput_batch_choices,
    times_better,
)

SCENARIOS = ("latency_b1", "throughput_b64", "throughput_max_batch")
METRIC = {
    "latency_b1": "latency_s",
    "throughput_b64": "throughput_tokens_per_s",
    "throughput_max_batch": "throughput_tokens_per_s",
}
FIXED_BATCH = {"latency_b1": 1, "throughput_b64": 64}
BATCH_CAP = 1 << 16  # the optimiser's own batch search cap
SHOWN_BASELINES = ("flexgen", "ipex", "gpu_only")


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]
    models: tuple[str, ...]
    lengths: tuple[tuple[int, int], ...]  # (L_in, L_out)
    scenarios: tuple[str, ...] = field(default=SCENARIOS, metadata={"choices": SCENARIOS})


FULL = Grid(
    systems=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100"),
    models=("opt-30b", "opt-66b", "opt-175b"),
    lengths=((32, 32), (256, 32), (2016, 32), (32, 256), (1792, 256)),
)
REDUCED = Grid(systems=("spr-a100", "gnr-h100"), models=("opt-30b", "opt-175b"), lengths=((32, 32), (1792, 256)))


@dataclass(frozen=True)
class Point:
    system: str
    model: str
    input_len: int
    output_len: int
    scenario: str


def points(grid: Grid) -> list[Point]:
    return [
        Point(s, m, li, lo, sc)
        for s in grid.systems
        for m in grid.models
        for (li, lo) in grid.lengths
        for sc in grid.scenarios
    ]


def _baseline_batch(point: Point, label: str) -> Optional[int]:
    """The largest batch at which the baseline's own plan fits memory."""
    system, model = inputs.system(point.system), inputs.model(point.model)

    def fits(batch: int) -> bool:
        wl = inputs.workload(point.model, batch, point.input_len, point.output_len)
        plan = baseline(label, system, model, wl).plan
        return plan_fits(system, model, wl, plan)

    return largest_feasible(1, BATCH_CAP, fits)  # memory grows with the batch: bisection


def _row(
    point: Point,
    plan_label: str,
    batch: Optional[int],
    plan,
    prediction,
    in_space: Optional[bool],
    base: Optional[Baseline] = None,
) -> Row:
    fields = prediction_fields(prediction)
    own = base.flexgen.solution.throughput_tokens_per_s if base is not None and base.flexgen else None
    return {
        "system": point.system,
        "model": point.model,
        "input_len": point.input_len,
        "output_len": point.output_len,
        "scenario": point.scenario,
        "metric": METRIC[point.scenario],
        "plan": plan_label,
        "batch": batch,
        **fields,
        "value": fields[METRIC[point.scenario]],
        "speedup": None,
        "in_optimizer_space": in_space,
        **plan_fields(plan),
        "head_device": head_device(plan).name.lower() if plan is not None else None,
        "cpu_kv_passes": base.cpu_kv_passes if base is not None else None,
        "flexgen_own_throughput_tokens_per_s": own,
    }


def run(point: Point) -> list[Row]:
    system, model = inputs.system(point.system), inputs.model(point.model)
    batch = FIXED_BATCH.get(point.scenario, 1)
    workload = inputs.workload(point.model, batch, point.input_len, point.output_len)
    objective = "throughput" if point.scenario == "throughput_max_batch" else "latency"
    best = optimum(system, model, workload, objective)
    rows = [
        _row(
            point,
            "optimum",
            best.workload.batch if best else None,
            best.plan if best else None,
            best.prediction if best else None,
            True,
        )
    ]
    choices = throughput_batch_choices(system, model, workload) if objective == "throughput" else None
    for label in BASELINE_LABELS:
        wl: Optional[Workload] = workload
        if point.scenario == "throughput_max_batch" and label != "flexgen":
            b = _baseline_batch(point, label)
            wl = None if b is None else inputs.workload(point.model, b, point.input_len, point.output_len)
        if wl is None:  # not even B = 1 fits
            base = baseline(label, system, model, workload)
            rows.append(_row(point, label, None, base.plan, None, in_optimizer_space(system, base.plan, 1), base))
            continue
        base = baseline(label, system, model, wl, choose_batch=point.scenario == "throughput_max_batch")
        rows.append(
            _row(
                point,
                label,
                base.workload.batch,
                base.plan,
                base.predict(system, model),
                in_optimizer_space(system, base.plan, base.workload.batch, choices),
                base,
            )
        )
    for row in rows[1:]:  # how many times better the optimum is than this baseline
        row["speedup"] = times_better(rows[0]["value"], row["value"], row["metric"])
    return rows


COLUMNS = (
    *SCENARIO_COLUMNS,
    "plan",
    "batch",
    *PREDICTION_COLUMNS,
    "value",
    "speedup",
    "in_optimizer_space",
    *PLAN_COLUMNS,
    "head_device",
    "cpu_kv_passes",
    "flexgen_own_throughput_tokens_per_s",
)

SCENARIO_TITLES = {
    "latency_b1": "latency at B = 1",
    "throughput_b64": "throughput at B = 64",
    "throughput_max_batch": "throughput, largest batch that fits",
}


def _order(values, preferred) -> list:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    """Grouped bars at two-column width: per scenario (column) and fair baseline (row: FlexGen with its own
    policy, IPEX), how many times better the optimum is on each system, one bar per model at the median over
    the (L_in, L_out) grid, whiskers from its smallest to its largest value. Bars are drawn over the lengths
    where both the baseline and the optimum fit; a model whose baseline fits at none is marked "n/f". GPU-only
    plans fit rarely on these systems: the footnote counts them, and the CSV holds every number."""
    from matplotlib.ticker import FixedLocator, NullLocator

    from studies.plotting import MIN_FONT_PT, PLAN_NAMES, TWO_COLUMN_IN, figure

    grid = grid or FULL
    systems = _order(frame["system"], grid.systems)
    models = _order(frame["model"], grid.models)
    scenarios = _order(frame["scenario"], SCENARIOS)
    baselines = ("flexgen", "ipex")
    fig, axes = figure(len(baselines), len(scenarios), TWO_COLUMN_IN, 1.75 * len(baselines) + 0.9, layout="constrained")
    colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")
    width = 0.8 / max(1, len(models))
    for r, peer in enumerate(baselines):
        for c, scenario in enumerate(scenarios):
            ax = axes[r][c]
            part = frame[(frame["scenario"] == scenario) & (frame["plan"] == peer)]
            for k, model in enumerate(models):
                for j, system in enumerate(systems):
                    rows = part[(part["model"] == model) & (part["system"] == system)]
                    x = j + (k - (len(models) - 1) / 2) * width
                    speedups = rows.loc[rows["feasible"].astype(bool), "speedup"].dropna().astype(float)
                    if speedups.empty:
                        if len(rows):
                            ax.text(x, 1.0, "n/f", rotation=90, ha="center", va="bottom", fontsize=MIN_FONT_PT)
                        continue
                    mid = float(speedups.median())
                    ax.bar(x, mid, width * 0.9, color=colors[k % len(colors)], label=model if (j == 0) else None)
                    ax.vlines(x, float(speedups.min()), float(speedups.max()), color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.axhline(1.0, color="black", linewidth=0.6)
            top = max(2.0, float(frame.loc[frame["plan"].isin(baselines), "speedup"].max(skipna=True)) * 1.3)
            ax.set_ylim(0.5, top)
            ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top]
            ax.yaxis.set_major_locator(FixedLocator(ticks))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_yticklabels([f"{t:g}x" for t in ticks], fontsize=MIN_FONT_PT)
            ax.set_xticks(range(len(systems)), systems, fontsize=MIN_FONT_PT)
            ax.tick_params(axis="x", length=0)
            if r == 0:
                ax.set_title(SCENARIO_TITLES[scenario], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"optimum / {PLAN_NAMES[peer]}", fontsize=MIN_FONT_PT + 0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        [m.upper() for m in labels],
        loc="outside upper center",
        ncol=len(models),
        fontsize=MIN_FONT_PT,
        frameon=False,
    )
    gpu = frame[frame["plan"] == "gpu_only"]
    fits = int(gpu["feasible"].astype(bool).sum())
    fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))
    fig.text(
        0.01,
        0.005,
        f"Cost model, overlap mode. Bars: median over {frame[['input_len', 'output_len']].drop_duplicates().shape[0]} "
        "(L_in, L_out); whiskers: min to max; n/f: the baseline does not fit.\n"
        f"GPU only fits at {fits} of {len(gpu)} points; every number is in figures/e2e.csv.",
        fontsize=MIN_FONT_PT,
        ha="left",
        va="bottom",
    )
    return fig


STUDY = Study(
    name="e2e",
    title="Optimum vs baselines: latency at B=1, throughput at B=64 and at the largest batch",
    description="For OPT-30B/66B/175B on four systems and five (L_in, L_out), the optimum's latency and "
    "throughput and how many times better it is than FlexGen (its own policy), IPEX and GPU-only plans.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("system", "model", "input_len", "output_len", "scenario", "plan"),
    columns=COLUMNS,
)
