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

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from lia_model.baselines import BASELINE_LABELS, Baseline, baseline
from lia_model.memory import memory_use
from lia_model.optimizer.infeasible import largest_feasible
from lia_model.plan import head_device
from lia_model.workload import Workload
from studies import inputs
from studies.framework import Row, Study
from studies.optimum import (
    PLAN_COLUMNS,
    PREDICTION_COLUMNS,
    in_optimizer_space,
    optimum,
    plan_fields,
    prediction_fields,
    throughput_batch_choices,
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
    scenarios: tuple[str, ...] = SCENARIOS


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
        return all(u.fits for u in memory_use(system, model, wl, plan).values())

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
    opt_value = rows[0]["value"]
    for row in rows[1:]:
        if opt_value is not None and row["value"] is not None:
            lower_is_better = row["metric"] == "latency_s"
            row["speedup"] = row["value"] / opt_value if lower_is_better else opt_value / row["value"]
    return rows


COLUMNS = (
    "system",
    "model",
    "input_len",
    "output_len",
    "scenario",
    "metric",
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
    "throughput_max_batch": "throughput at the largest batch that fits",
}


def _order(values, preferred) -> list:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    """Annotated heatmaps: per scenario (row), the optimum's value and its speedup over each baseline."""
    import matplotlib.colors as mcolors

    from studies.plotting import PLAN_NAMES, figure, fmt_seconds, fmt_tokens_per_s

    grid = grid or FULL
    systems = _order(frame["system"], grid.systems)
    workloads = frame[["model", "input_len", "output_len"]].drop_duplicates()
    models = _order(workloads["model"], grid.models)
    ylabels, ykeys = [], []
    for m in models:
        for li, lo in _order(
            [tuple(x) for x in workloads[workloads["model"] == m][["input_len", "output_len"]].itertuples(index=False)],
            grid.lengths,
        ):
            ykeys.append((m, li, lo))
            ylabels.append(f"{m.upper()}  {li}/{lo}")
    scenarios = _order(frame["scenario"], SCENARIOS)
    columns = ["optimum", *SHOWN_BASELINES]
    fig, axes = figure(
        len(scenarios),
        len(columns),
        3.9 * len(columns) + 1.2,
        0.42 * len(ykeys) * len(scenarios) + 1.8,
        layout="constrained",
    )
    norm = mcolors.TwoSlopeNorm(vmin=-2.0, vcenter=0.0, vmax=2.0)  # log10(speedup): 1/100x .. 100x
    cmap = __import__("matplotlib").colormaps["PuOr"]
    image = None
    for r, scenario in enumerate(scenarios):
        part = frame[frame["scenario"] == scenario].set_index(["model", "input_len", "output_len", "system", "plan"])
        for c, plan in enumerate(columns):
            ax = axes[r][c]
            ax.grid(False)
            values = np.full((len(ykeys), len(systems)), np.nan)
            texts = [["" for _ in systems] for _ in ykeys]
            for i, key in enumerate(ykeys):
                for j, sysname in enumerate(systems):
                    idx = (*key, sysname, plan)
                    if idx not in part.index:
                        texts[i][j] = ""
                        continue
                    row = part.loc[idx]
                    if plan == "optimum":
                        if not bool(row["feasible"]):
                            texts[i][j] = "nothing fits"
                        elif scenario == "latency_b1":
                            texts[i][j] = fmt_seconds(float(row["value"]))
                        else:
                            texts[i][j] = (
                                f"{fmt_tokens_per_s(float(row['value']))}\nB={int(row['batch'])}"
                                if scenario == "throughput_max_batch"
                                else fmt_tokens_per_s(float(row["value"]))
                            )
                    elif not bool(row["feasible"]):
                        texts[i][j] = "does not\nfit"
                    elif pd.isna(row["speedup"]):
                        texts[i][j] = "(no optimum)"
                    else:
                        values[i, j] = np.log10(float(row["speedup"]))
                        texts[i][j] = f"{float(row['speedup']):.3g}x"
            if plan == "optimum":
                ax.imshow(np.zeros_like(values), cmap="Greys", vmin=0, vmax=1, aspect="auto")
            else:
                image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
                for i in range(len(ykeys)):
                    for j in range(len(systems)):
                        if np.isnan(values[i, j]):
                            ax.add_patch(
                                __import__("matplotlib").patches.Rectangle(
                                    (j - 0.5, i - 0.5),
                                    1,
                                    1,
                                    facecolor="#eeeeee",
                                    hatch="///",
                                    edgecolor="#bbbbbb",
                                    linewidth=0,
                                )
                            )
            for i in range(len(ykeys)):
                for j in range(len(systems)):
                    dark = not np.isnan(values[i, j]) and abs(values[i, j]) > 1.2  # dark cell: white text
                    ax.text(
                        j,
                        i,
                        texts[i][j],
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        linespacing=0.95,
                        color="#555555"
                        if np.isnan(values[i, j]) and plan != "optimum"
                        else ("white" if dark else "black"),
                    )
            ax.set_xticks(range(len(systems)), systems, fontsize=7.5)
            ax.xaxis.tick_top()
            ax.set_yticks(range(len(ykeys)), ylabels if c == 0 else [""] * len(ykeys), fontsize=7)
            for boundary in range(1, len(models)):
                ax.axhline(boundary * len(ykeys) / len(models) - 0.5, color="black", linewidth=0.8)
            unit = "latency" if scenario == "latency_b1" else "tokens/s"
            title = f"optimum: {unit}" if plan == "optimum" else f"speedup over {PLAN_NAMES[plan]}"
            ax.set_title(f"{SCENARIO_TITLES[scenario]}\n{title}", fontsize=8.5, pad=4)
            ax.tick_params(axis="x", length=0, pad=2)
        axes[r][0].set_ylabel("model  L_in/L_out (tokens)")
    if image is not None:
        bar = fig.colorbar(image, ax=[a for row in axes for a in row], shrink=0.4, pad=0.01, aspect=40)
        ticks = [-2, -1, 0, 1, 2]
        bar.set_ticks(ticks, labels=[f"{10.0**t:g}x" for t in ticks])
        bar.set_label("how many times better the optimum is (log scale)")
    fig.suptitle(
        "End to end: the optimal plan vs FlexGen (its own policy), IPEX (all CPU) and GPU-only (cost model, "
        "overlap mode); "
        "hatched: the baseline does not fit memory",
        fontsize=10.5,
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
