"""validation: predicted vs measured, from the committed validation data of the runtime (when present).

Where the data is: ``VALIDATION_CSV`` (runtime/validation/results.csv, the merged results of the runtime's
validation campaign, see docs/runtime.md) under the repository root; a ``Grid`` can name another. When it does
not exist the study says so and writes nothing: it never makes numbers up. Any pair of columns ``predicted_X`` /
``measured_X`` is a metric X (the runtime's per-sublayer times are ``predicted_{stage}_{sublayer}_ms`` /
``measured_...``, with the device in ``plan_{stage}_{sublayer}_device``; older CSVs are read through
``runtime.report.upgrade_columns``); the
additive-mode prediction ``predicted_latency_additive_s`` is compared with ``measured_latency_s``, so the
paper's serial sum and the overlap model can be told apart. Each output row is one (point, metric) that has
both numbers, with the relative error (predicted - measured) / measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from runtime.report import GOAL_MAX_ABS_ERR, GOAL_MEAN_ABS_ERR, upgrade_columns
from studies.framework import Row, Study

REPO = Path(__file__).resolve().parent.parent
VALIDATION_CSV = "runtime/validation/results.csv"
ID_COLUMNS = ("point_id", "model", "num_layers", "batch", "input_len", "output_len", "gpu_memory_gib", "plan_label")
SUBLAYER_METRIC = re.compile(r"^(prefill|decode)_(qkv|attn_score|attn_context|out_proj|fc1|fc2)_ms$")
HEADLINE_METRICS = ("ttft_s", "tpot_mean_s", "latency_s", "latency_additive_s", "throughput_tokens_per_s")


@dataclass(frozen=True)
class Grid:
    root: str = str(REPO)
    csv: str = VALIDATION_CSV  # relative to root


FULL = Grid()
REDUCED = Grid()


def data_path(grid: Grid) -> Optional[Path]:
    """The validation CSV of the grid, or None where it does not exist (yet)."""
    path = Path(grid.root) / grid.csv
    return path if path.is_file() else None


def metric_pairs(columns: list[str]) -> dict[str, tuple[str, str]]:
    """metric -> (predicted column, measured column)."""
    pairs: dict[str, tuple[str, str]] = {}
    cols = set(columns)
    for c in columns:
        metric = c[len("predicted_") :]
        if c.startswith("predicted_") and f"measured_{metric}" in cols:
            pairs[metric] = (c, f"measured_{metric}")
    if "predicted_latency_additive_s" in cols and "measured_latency_s" in cols:
        pairs["latency_additive_s"] = ("predicted_latency_additive_s", "measured_latency_s")
    return dict(sorted(pairs.items()))


def unavailable(grid: Grid) -> Optional[str]:
    path = data_path(grid)
    if path is None:
        return (
            f"no validation data: {grid.csv} does not exist yet (the runtime's validation run writes it); "
            "nothing is plotted rather than made-up numbers"
        )
    frame = upgrade_columns(pd.read_csv(path))
    if not metric_pairs(list(frame.columns)):
        return (
            f"{path} has no predicted_X / measured_X column pairs (columns: {', '.join(frame.columns)}); "
            "the validation study needs them"
        )
    return None


@dataclass(frozen=True)
class Point:
    source: str
    row_index: int
    fields: tuple[tuple[str, Any], ...]


def points(grid: Grid) -> list[Point]:
    path = data_path(grid)
    if path is None:
        return []
    frame = upgrade_columns(pd.read_csv(path))
    rel = str(path.relative_to(grid.root)) if path.is_relative_to(grid.root) else str(path)
    return [
        Point(rel, k, tuple((c, _plain(v)) for c, v in rec.items()))
        for k, rec in enumerate(frame.to_dict(orient="records"))
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _number(value: Any) -> Optional[float]:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def run(point: Point) -> list[Row]:
    fields = dict(point.fields)
    ident = {c: fields.get(c) for c in ID_COLUMNS}
    out = []
    for metric, (pcol, mcol) in metric_pairs(list(fields)).items():
        pred, meas = _number(fields[pcol]), _number(fields[mcol])
        if pred is None or meas is None:
            continue  # a skipped point, or a sublayer that did not run: nothing to compare
        match = SUBLAYER_METRIC.match(metric)
        out.append(
            {
                "source": point.source,
                "row": point.row_index,
                **ident,
                "kind": "sublayer" if match else "headline",
                "stage": match.group(1) if match else None,
                "sublayer": match.group(2) if match else None,
                "device": fields.get(f"plan_{metric[:-3]}_device") if match else None,
                "metric": metric,
                "predicted": pred,
                "measured": meas,
                "error_pct": (pred - meas) / meas * 100.0 if meas != 0.0 else None,
            }
        )
    return out


COLUMNS = (
    "source",
    "row",
    *ID_COLUMNS,
    "kind",
    "stage",
    "sublayer",
    "device",
    "metric",
    "predicted",
    "measured",
    "error_pct",
)


PANEL_TITLES = {
    "ttft_s": "time to first token",
    "tpot_mean_s": "mean time per output token",
    "latency_s": "end-to-end latency, overlap model",
    "latency_additive_s": "end-to-end latency, additive model (the paper's serial sum)",
    "throughput_tokens_per_s": "throughput",
    "sublayer": "per-sublayer times (prefill and decode)",
}


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    import matplotlib
    from matplotlib.lines import Line2D

    from studies.plotting import figure

    frame = frame.copy()
    frame["panel"] = np.where(frame["kind"] == "sublayer", "sublayer", frame["metric"])
    panels = [p for p in (*HEADLINE_METRICS, "sublayer") if p in set(frame["panel"])]
    panels += sorted(set(frame["panel"]) - set(panels))
    ncols = 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = figure(nrows, ncols, 15, 4.6 * nrows + 1.2)
    labels = sorted(frame["plan_label"].dropna().astype(str).unique())
    cmap = matplotlib.colormaps["tab10"]
    colors = {lab: cmap(k % 10) for k, lab in enumerate(labels)}
    markers = dict(zip(sorted(frame["model"].dropna().astype(str).unique()), "osD^v<>"))
    device_colors = {"cpu": "#b2182b", "gpu": "#2166ac"}
    for k, panel in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        part = frame[frame["panel"] == panel]
        if panel == "sublayer":
            for dev, sub in part.groupby(part["device"].fillna("?").astype(str)):
                ax.scatter(
                    sub["measured"],
                    sub["predicted"],
                    s=9,
                    alpha=0.55,
                    color=device_colors.get(dev, "#777777"),
                    label=f"sublayer on {dev.upper()}",
                )
            ax.legend(fontsize=7, loc="lower right")
        else:
            for (lab, model), sub in part.groupby([part["plan_label"].astype(str), part["model"].astype(str)]):
                ax.scatter(
                    sub["measured"],
                    sub["predicted"],
                    s=22,
                    alpha=0.85,
                    color=colors.get(lab, "#777777"),
                    marker=markers.get(model, "o"),
                    edgecolor="white",
                    linewidth=0.4,
                )
        values = part[["predicted", "measured"]].to_numpy(dtype=float)
        values = values[values > 0]
        lo, hi = (values.min() / 1.6, values.max() * 1.6) if len(values) else (1e-3, 1.0)
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", linewidth=0.8)
        # the issue-10 goals: mean |error| <= 5% (dark band), max |error| <= 15% (light band)
        ax.fill_between(xs, xs * (1 - GOAL_MAX_ABS_ERR), xs * (1 + GOAL_MAX_ABS_ERR), color="grey", alpha=0.12, lw=0)
        ax.fill_between(xs, xs * (1 - GOAL_MEAN_ABS_ERR), xs * (1 + GOAL_MEAN_ABS_ERR), color="grey", alpha=0.25, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        unit = "ms" if panel == "sublayer" else ("tokens/s" if panel.startswith("throughput") else "s")
        ax.set_xlabel(f"measured ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
        errors = part["error_pct"].abs()
        ax.set_title(
            f"{PANEL_TITLES.get(panel, panel)}\nmean |error| {errors.mean():.0f}%, median "
            f"{errors.median():.0f}% over {len(part)} " + ("sublayer times" if panel == "sublayer" else "points"),
            fontsize=9,
        )
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [Line2D([], [], linestyle="", marker="o", color=colors[lab], label=f"plan {lab}") for lab in labels]
    handles += [
        Line2D([], [], linestyle="", marker=m, color="#555555", label=model.upper()) for model, m in markers.items()
    ]
    handles += [
        Line2D([], [], color="black", linewidth=0.8, label="predicted = measured"),
        matplotlib.patches.Patch(color="grey", alpha=0.37, label=f"within +-{GOAL_MEAN_ABS_ERR:.0%} (mean-error goal)"),
        matplotlib.patches.Patch(color="grey", alpha=0.12, label=f"within +-{GOAL_MAX_ABS_ERR:.0%} (max-error goal)"),
    ]
    ncol = 6
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7.5, frameon=False)
    # room for the legend's rows (about 0.17 in each at 7.5 pt) below the axes' labels
    legend_rows = -(-len(handles) // ncol)
    bottom = min(0.4, (0.17 * legend_rows + 0.25) / fig.get_size_inches()[1])
    sources = ", ".join(sorted(frame["source"].unique()))
    fig.suptitle(
        f"Cost model vs measurement on the GPU host ({sources}); the models run a subset of their layers "
        "where num_layers says so",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, bottom, 1, 0.96))
    return fig


STUDY = Study(
    name="validation",
    title="Predicted vs measured",
    description="The cost model's predictions against the runtime's measurements, per metric, with the mean "
    "absolute error.",
    full_grid=FULL,
    reduced_grid=REDUCED,
    points=points,
    run=run,
    plot=plot,
    sort_by=("source", "row", "metric"),
    columns=COLUMNS,
    unavailable=unavailable,
)
