"""Shared figure conventions: the non-interactive backend, one style, fixed colours per plan."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: studies run on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402

# Paper sizes: a figure is drawn at the width it is printed at (one column 3.3 in, two columns 7 in), so a
# font size here is its size on paper; nothing is below 7 pt.
ONE_COLUMN_IN = 3.3
TWO_COLUMN_IN = 7.0
MIN_FONT_PT = 7.0
STYLE = {
    "figure.dpi": 200,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

PLAN_COLORS = {
    "optimum": "#1b7837",
    "flexgen": "#2166ac",
    "ipex": "#b2182b",
    "gpu_only": "#7f7f7f",
}
PLAN_NAMES = {
    "optimum": "optimum (this work)",
    "flexgen": "FlexGen",
    "ipex": "IPEX (all CPU)",
    "gpu_only": "GPU only",
}


def figure(nrows: int, ncols: int, width_in: float, height_in: float, **kwargs):
    plt.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width_in, height_in), squeeze=False, **kwargs)


def grid_ticks(ax, axis: str, values, most: int = 6) -> None:
    """Ticks on grid values only (at most ``most``, evenly spread through the sorted values), labelled as
    integers; no minor ticks."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator

    values = sorted(set(values))
    step = max(1, int(np.ceil(len(values) / most)))
    chosen = values[::step]
    if values[-1] not in chosen and len(values) > 1:
        chosen = chosen[:-1] + [values[-1]] if len(chosen) >= most else chosen + [values[-1]]
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(chosen))
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(__import__("matplotlib").ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def smallest_font_pt(fig) -> float:
    """The smallest font size of any visible text in the figure (checked against MIN_FONT_PT)."""
    sizes = [
        t.get_fontsize()
        for t in fig.findobj(__import__("matplotlib").text.Text)
        if t.get_visible() and t.get_text().strip()
    ]
    return min(sizes) if sizes else MIN_FONT_PT


def fmt_tokens_per_s(value: float) -> str:
    if value >= 99.95:
        return f"{value:,.0f}"
    if value >= 9.995:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_seconds(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.1f} s"
    return f"{value * 1e3:.0f} ms"
