"""policy-map: the optimal prefill and decode policy vectors over batch B and prompt length L.

For every (system, B, L) the optimiser's latency objective for one batch of B sequences of L_in = L prompt
tokens and L_out generated tokens (at a fixed batch the lowest latency is also the highest throughput).
The model is Llama-3.1-70B: OPT's 2048-token context cannot reach L = 4096, and a 70B model leaves room
for large batches in host memory. Cells where no plan fits are "nothing fits"; cells where every layer
is GPU-resident have no streamed layer, so their policy vectors are moot ("all layers GPU-resident").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from lia_model.plan import policy_in_words
from studies import inputs
from studies.framework import Row, Study
from studies.optimum import optimum, plan_fields, prediction_fields

NOTHING_FITS = "nothing fits"
ALL_RESIDENT = "all layers GPU-resident"
OTHER = "other"
NAMED_VECTORS = 18   # the most frequent vectors get their own colour; the rest share one (the CSV has them all)


def log_grid(lo: int, hi: int, per_octave: int) -> tuple[int, ...]:
    """Integers spaced evenly in log2 from lo to hi (both included), per_octave steps per doubling."""
    octaves = np.log2(hi / lo)
    values = np.rint(lo * 2.0 ** (np.arange(int(round(octaves * per_octave)) + 1) / per_octave)).astype(int)
    return tuple(sorted(set(int(v) for v in values)))


@dataclass(frozen=True)
class Grid:
    systems: tuple[str, ...]
    model: str
    batches: tuple[int, ...]
    input_lens: tuple[int, ...]
    output_len: int


FULL = Grid(systems=("spr-a100", "spr-h100", "gnr-a100", "gnr-h100"), model="llama-3.1-70b",
            batches=log_grid(1, 4096, 2), input_lens=log_grid(16, 4096, 2), output_len=32)
REDUCED = Grid(systems=("spr-a100", "gnr-h100"), model="llama-3.1-70b", batches=(1, 16, 256, 4096),
               input_lens=(16, 256, 4096), output_len=32)


@dataclass(frozen=True)
class Point:
    system: str
    model: str
    batch: int
    input_len: int
    output_len: int


def points(grid: Grid) -> list[Point]:
    return [Point(s, grid.model, b, n, grid.output_len) for s in grid.systems for b in grid.batches
            for n in grid.input_lens]


def run(point: Point) -> list[Row]:
    system, model = inputs.system(point.system), inputs.model(point.model)
    best = optimum(system, model, inputs.workload(point.model, point.batch, point.input_len, point.output_len))
    plan = best.plan if best else None
    return [{"system": point.system, "model": point.model, "batch": point.batch, "input_len": point.input_len,
             "output_len": point.output_len, **prediction_fields(best.prediction if best else None),
             **plan_fields(plan), "num_layers": model.num_layers}]


COLUMNS = ("system", "model", "batch", "input_len", "output_len", "feasible", "ttft_s", "tpot_mean_s", "latency_s",
           "throughput_tokens_per_s", "prefill_policy", "decode_policy", "gpu_resident_layers",
           "prefill_minibatches", "weight_tier", "kv_tier", "cpu_isa", "num_layers")


def cell_category(row: pd.Series, stage_column: str) -> str:
    if not bool(row["feasible"]):
        return NOTHING_FITS
    if int(row["gpu_resident_layers"]) == int(row["num_layers"]):
        return ALL_RESIDENT
    return str(row[stage_column])


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges halfway (in log space) between grid values."""
    logs = np.log2(values.astype(float))
    mids = (logs[1:] + logs[:-1]) / 2
    first = logs[0] - (mids[0] - logs[0]) if len(logs) > 1 else logs[0] - 0.5
    last = logs[-1] + (logs[-1] - mids[-1]) if len(logs) > 1 else logs[-1] + 0.5
    return 2.0 ** np.concatenate([[first], mids, [last]])


def _words(category: str) -> str:
    if category in (NOTHING_FITS, ALL_RESIDENT):
        return category
    from lia_model.plan import Plan

    vec = Plan(prefill_policy=category, decode_policy=category).prefill_policy
    return f"{category}  {policy_in_words(vec)}"


def plot(frame: pd.DataFrame, grid: Optional[Grid] = None):
    import matplotlib
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from studies.plotting import figure

    grid = grid or FULL
    frame = frame.copy()
    frame["prefill"] = frame.apply(cell_category, axis=1, stage_column="prefill_policy")
    frame["decode"] = frame.apply(cell_category, axis=1, stage_column="decode_policy")
    systems = [s for s in grid.systems if s in set(frame["system"])] or sorted(frame["system"].unique())
    # One colour per policy vector across all panels, most frequent first; the rare ones share "other".
    counts = pd.concat([frame["prefill"], frame["decode"]]).value_counts()
    vectors = sorted((c for c in counts.index if c not in (NOTHING_FITS, ALL_RESIDENT)), key=lambda v: (-counts[v], v))
    named, rare = vectors[:NAMED_VECTORS], vectors[NAMED_VECTORS:]
    if rare:
        for stage in ("prefill", "decode"):
            frame[stage] = frame[stage].where(~frame[stage].isin(rare), OTHER)
    # tab20 without its two greys (greys mean "other" and "all resident" here)
    palette = [c for k, c in enumerate(matplotlib.colormaps["tab20"].colors) if k not in (14, 15)]
    colors = {v: palette[k % len(palette)] for k, v in enumerate(named)}
    colors[OTHER] = (0.8, 0.8, 0.8)
    colors[NOTHING_FITS] = (1.0, 1.0, 1.0)
    colors[ALL_RESIDENT] = (0.35, 0.35, 0.35)
    categories = named + [OTHER, ALL_RESIDENT, NOTHING_FITS]
    index = {c: k for k, c in enumerate(categories)}
    cmap = ListedColormap([colors[c] for c in categories])
    total_cells = 2 * len(frame)

    batches = np.array(sorted(frame["batch"].unique()))
    lens = np.array(sorted(frame["input_len"].unique()))
    fig, axes = figure(2, len(systems), 3.6 * len(systems) + 0.6, 10.5)
    for c, sysname in enumerate(systems):
        part = frame[frame["system"] == sysname]
        for r, stage in enumerate(("prefill", "decode")):
            ax = axes[r][c]
            table = part.pivot(index="batch", columns="input_len", values=stage).reindex(index=batches, columns=lens)
            codes = table.apply(lambda col: col.map(lambda v: index.get(v, index[NOTHING_FITS]))).to_numpy()
            ax.pcolormesh(_edges(lens), _edges(batches), codes, cmap=cmap, vmin=-0.5, vmax=len(categories) - 0.5,
                          edgecolors="face", linewidth=0, rasterized=True)   # SVG: one image, not 400 cells
            # hatch the cells where nothing fits, so white is not read as a policy
            xe, ye = _edges(lens), _edges(batches)
            for i, j in zip(*np.nonzero(codes == index[NOTHING_FITS])):
                ax.add_patch(Rectangle((xe[j], ye[i]), xe[j + 1] - xe[j], ye[i + 1] - ye[i], facecolor="none",
                                       hatch="////", edgecolor="#b0b0b0", linewidth=0))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.grid(False)
            ax.set_xlabel("prompt length L_in (tokens)")
            ax.set_ylabel("batch B (sequences)" if c == 0 else "")
            ax.set_title(f"{sysname}: {stage} policy", fontsize=9.5)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    used = [c for c in categories if (frame["prefill"] == c).any() or (frame["decode"] == c).any()]
    def label(c: str) -> str:
        if c == OTHER:
            share = max(counts[v] for v in rare) / total_cells
            return f"other: {len(rare)} more vectors, each in at most {share:.1%} of the cells (see the CSV)"
        return _words(c)

    handles = [Patch(facecolor=colors[c], edgecolor="#888888", hatch="////" if c == NOTHING_FITS else None,
                     label=label(c)) for c in used]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7.5, frameon=False,
               title="policy vector (1 = CPU, 0 = GPU; order qkv, attn_score, attn_context, out_proj, fc1, fc2)",
               title_fontsize=8)
    rows_legend = (len(used) + 1) // 2
    fig.suptitle(f"Optimal policy of the streamed layers: {grid.model.upper()}, L_out = {grid.output_len}, "
                 f"latency objective at each (B, L_in)", fontsize=10.5)
    fig.tight_layout(rect=(0, 0.015 + 0.0165 * rows_legend, 1, 0.97))
    return fig


STUDY = Study(
    name="policy-map",
    title="Optimal prefill and decode policy over batch and prompt length",
    description="Which sublayers the optimum runs on the CPU and which on the GPU, in prefill and in decode, "
                "over B = 1..4096 and L_in = 16..4096 for each system.",
    full_grid=FULL, reduced_grid=REDUCED, points=points, run=run, plot=plot,
    sort_by=("system", "batch", "input_len"), columns=COLUMNS,
)
