"""Shared figure conventions: the non-interactive backend, one style, fixed colours per plan."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: studies run on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
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
