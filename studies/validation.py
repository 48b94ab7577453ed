"""validation: predicted vs measured, from the committed validation data of the runtime (when present).

Where the data is: the CSV path that docs/runtime.md names (the first ``*.csv`` path in it that exists),
else validation/results.csv. When neither exists the study says so and writes nothing: it never makes
numbers up. Any pair of columns ``predicted_X`` / ``measured_X`` (or ``X_predicted`` / ``X_measured``)
is a metric X; every other column of the file that is not a number pair is kept as an identifying field
(system, model, batch, plan, ...). Each output row is one (input row, metric) with its relative error
(predicted - measured) / measured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from studies.framework import Row, Study

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = Path("validation/results.csv")
RUNTIME_DOC = Path("docs/runtime.md")
ID_COLUMNS = ("system", "model", "plan", "label", "mode", "batch", "input_len", "output_len", "stage", "sublayer",
              "host", "gpu", "device")


@dataclass(frozen=True)
class Grid:
    root: str = str(REPO)      # where docs/runtime.md and validation/ live


FULL = Grid()
REDUCED = Grid()


def data_path(grid: Grid) -> Optional[Path]:
    """The validation CSV: the first existing *.csv path named in docs/runtime.md, else validation/results.csv."""
    root = Path(grid.root)
    doc = root / RUNTIME_DOC
    candidates: list[Path] = []
    if doc.exists():
        for match in re.findall(r"[\w./-]+\.csv", doc.read_text()):
            candidates.append(root / match.lstrip("./"))
    candidates.append(root / DEFAULT_CSV)
    return next((p for p in candidates if p.is_file()), None)


def metric_pairs(columns: list[str]) -> dict[str, tuple[str, str]]:
    """metric -> (predicted column, measured column)."""
    pairs: dict[str, tuple[str, str]] = {}
    cols = set(columns)
    for c in columns:
        for pred, meas, metric in ((c, c.replace("predicted_", "measured_", 1), c[len("predicted_"):]),
                                   (c, c[: -len("_predicted")] + "_measured", c[: -len("_predicted")])):
            if (pred.startswith("predicted_") and meas.startswith("measured_") and meas in cols) or \
                    (pred.endswith("_predicted") and meas.endswith("_measured") and meas in cols):
                pairs[metric] = (pred, meas)
    return dict(sorted(pairs.items()))


def unavailable(grid: Grid) -> Optional[str]:
    path = data_path(grid)
    if path is None:
        return (f"no validation data: neither a CSV named in {RUNTIME_DOC} nor {DEFAULT_CSV} exists yet "
                "(the runtime's validation run writes it); nothing is plotted rather than made-up numbers")
    frame = pd.read_csv(path)
    if not metric_pairs(list(frame.columns)):
        return (f"{path} has no predicted_X / measured_X column pairs (columns: {', '.join(frame.columns)}); "
                "the validation study needs them")
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
    frame = pd.read_csv(path)
    rel = str(path.relative_to(grid.root)) if path.is_relative_to(grid.root) else str(path)
    return [Point(rel, k, tuple((c, _plain(v)) for c, v in rec.items())) for k, rec in
            enumerate(frame.to_dict(orient="records"))]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def run(point: Point) -> list[Row]:
    fields = dict(point.fields)
    pairs = metric_pairs(list(fields))
    used = {c for pair in pairs.values() for c in pair}
    ident = {c: fields.get(c) for c in ID_COLUMNS}
    other = "; ".join(f"{c}={v}" for c, v in fields.items() if c not in used and c not in ID_COLUMNS)
    out = []
    for metric, (pcol, mcol) in pairs.items():
        pred, meas = fields[pcol], fields[mcol]
        ok = pred is not None and meas is not None and float(meas) != 0.0
        out.append({"source": point.source, "row": point.row_index, **ident, "other_fields": other,
                    "metric": metric, "predicted": pred, "measured": meas,
                    "error_pct": (float(pred) - float(meas)) / float(meas) * 100.0 if ok else None})
    return out


COLUMNS = ("source", "row", *ID_COLUMNS, "other_fields", "metric", "predicted", "measured", "error_pct")


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    from studies.plotting import figure

    metrics = sorted(frame["metric"].unique())
    fig, axes = figure(1, len(metrics), 4.6 * len(metrics), 4.8)
    cmap = __import__("matplotlib").colormaps["tab10"]
    for k, metric in enumerate(metrics):
        ax = axes[0][k]
        part = frame[(frame["metric"] == metric)].dropna(subset=["predicted", "measured"])
        groups = part.groupby(part["system"].fillna("?") if part["system"].notna().any() else part["metric"])
        for g, (name, sub) in enumerate(groups):
            ax.scatter(sub["measured"], sub["predicted"], s=18, color=cmap(g % 10), label=str(name), alpha=0.85)
        lo = float(np.nanmin(part[["predicted", "measured"]].to_numpy())) if len(part) else 1e-3
        hi = float(np.nanmax(part[["predicted", "measured"]].to_numpy())) if len(part) else 1.0
        lo, hi = lo / 1.5, hi * 1.5
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, xs, "k-", linewidth=0.8, label="predicted = measured")
        ax.fill_between(xs, xs * 0.8, xs * 1.2, color="grey", alpha=0.15, label="+-20%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        unit = metric.rsplit("_", 1)[-1] if "_" in metric else ""
        ax.set_xlabel(f"measured {metric}" + (f" ({unit})" if unit in ("s", "ms", "us") else ""))
        ax.set_ylabel(f"predicted {metric}")
        mape = float(np.nanmean(np.abs(part["error_pct"]))) if len(part) else float("nan")
        ax.set_title(f"{metric}: mean |error| {mape:.1f}% over {len(part)} rows", fontsize=9.5)
        ax.legend(fontsize=7, loc="upper left")
    sources = ", ".join(sorted(frame["source"].unique()))
    fig.suptitle(f"Cost model vs measurement ({sources})", fontsize=10.5)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


STUDY = Study(
    name="validation",
    title="Predicted vs measured",
    description="The cost model's predictions against the runtime's measurements, per metric, with the mean "
                "absolute error.",
    full_grid=FULL, reduced_grid=REDUCED, points=points, run=run, plot=plot,
    sort_by=("source", "row", "metric"), columns=COLUMNS, unavailable=unavailable,
)
